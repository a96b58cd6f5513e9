"""Merging several adapters, DoRA among them, gives the weights and logits ``peft`` gives.

DoRA scales the weight it is merged into by ``m / ||W + s B A||``, with ``W`` the base weight
*without* the adapters merged before it (as forward computes it, and peft 0.21.2 merges): a
norm taken from the partly merged weight makes merging two adapters differ from both active.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import peft
import pytest
import torch
from torch import nn

from kernel_core.peft import get_config, get_peft_model
from kernel_core_sdk.peft_oracle import logits
from kernel_core_sdk.tiny_models import tiny_llama

TOLERANCE = 1e-5  # float32; the observed differences are ~1e-7
FIELDS = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "init_lora_weights": False}
#: Adapter name → whether it is DoRA; merged in this order.
CASES = {
    "dora-dora": {"default": True, "other": True},
    "lora-then-dora": {"default": False, "other": True},
    "dora-then-lora": {"default": True, "other": False},
}


def _base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every targeted layer's base weight, by the layer's name in the transformers model."""
    return {
        name.split("base_model.model.", 1)[-1].removesuffix(".base_layer.weight"): value.detach().clone()
        for name, value in model.named_parameters()
        if name.endswith("base_layer.weight")
    }


def _two_adapters(case: str, folder: Path) -> tuple[nn.Module, peft.PeftModel]:
    """Ours with two random adapters, and peft with the same two loaded from our save."""
    (first, first_dora), (second, second_dora) = CASES[case].items()
    ours = get_peft_model(tiny_llama(), get_config("lora", **FIELDS, use_dora=first_dora))
    ours.add_adapter(second, get_config("lora", **FIELDS, use_dora=second_dora))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if "lora_" in name:  # both adapters, the DoRA magnitudes off their init too
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    ours.eval().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about its own config defaults
        reference = peft.PeftModel.from_pretrained(tiny_llama(), str(folder), adapter_name=first)
        reference.load_adapter(str(folder / second), adapter_name=second)
    return ours, reference.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_merging_two_adapters_matches_peft(case: str, tmp_path: Path) -> None:
    ours, reference = _two_adapters(case, tmp_path)
    names = list(CASES[case])
    base = _base_weights(ours)
    reference.base_model.set_adapter(names)
    both_active = logits(reference)
    assert (both_active - logits(tiny_llama())).abs().max() > 1e-2, "the adapters must change the output"

    ours.merge_adapter(names)
    reference.base_model.merge_adapter(adapter_names=names)

    merged, expected = _base_weights(ours), _base_weights(reference)
    assert merged.keys() == expected.keys() == base.keys() and merged
    for name, weight in expected.items():
        torch.testing.assert_close(merged[name], weight, atol=TOLERANCE, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert any((merged[name] - base[name]).abs().max() > 1e-2 for name in base), "merging must change the weights"
    torch.testing.assert_close(logits(ours), logits(reference), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(ours), both_active, atol=1e-4, rtol=0, msg=lambda m: f"merged vs both active: {m}")

    ours.unmerge_adapter()
    restored = _base_weights(ours)
    for name, weight in base.items():
        if any(CASES[case].values()):  # a merged DoRA adapter keeps the unmerged weight: restored exactly
            assert torch.equal(restored[name], weight), f"{name} differs after unmerge"
        else:
            torch.testing.assert_close(restored[name], weight, atol=TOLERANCE, rtol=0)
