"""``add_weighted_adapter`` gives the adapter ``peft`` builds from the same two adapters."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch

from kernel_core.peft import get_config, get_peft_model
from kernel_core_sdk.tiny_models import tiny_llama, token_ids


def _two_adapters(library: str) -> torch.nn.Module:
    """Adapters "a" (r=4, q/v) and "b" (r=4 or 2 via rank_pattern, q/o), random from a fixed seed."""
    first = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    second = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "o_proj"], "init_lora_weights": False, "use_rslora": True}
    base = tiny_llama()
    torch.manual_seed(9)
    if library == "peft":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(base, peft.LoraConfig(**first), adapter_name="a")
            model.add_adapter("b", peft.LoraConfig(**second))
    else:
        model = get_peft_model(base, get_config("lora", **first), adapter_name="a")
        model.add_adapter("b", get_config("lora", **second))
    return model.eval()


@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
def test_matches_peft(combination: str) -> None:
    ours, reference = _two_adapters("ours"), _two_adapters("peft")
    for model in (ours, reference):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "mix", combination_type=combination)
        model.set_adapter("mix")

    assert ours.peft_config["mix"].r == reference.peft_config["mix"].r
    assert sorted(ours.peft_config["mix"].target_modules) == sorted(reference.peft_config["mix"].target_modules)
    with torch.no_grad():
        torch.testing.assert_close(ours(token_ids()).logits, reference(token_ids()).logits, atol=1e-5, rtol=0)


def test_cat_is_exactly_the_weighted_sum() -> None:
    """``cat`` keeps every update, so the merged delta is sum(w_i * delta_i) for each layer."""
    model = _two_adapters("ours")
    model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "mix", combination_type="cat")
    layer = model.model.model.layers[0].self_attn.q_proj
    expected = sum(w * layer.scaling[n] * layer.lora_weight(n) for n, w in (("a", 0.7), ("b", -0.4)))
    torch.testing.assert_close(layer.scaling["mix"] * layer.lora_weight("mix"), expected, atol=1e-6, rtol=0)


def test_refusals_name_the_problem() -> None:
    model = _two_adapters("ours")
    with pytest.raises(ValueError, match="combination_type must be one of"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "mix", combination_type="ties_magic")
    model.add_adapter("c", get_config("lora", r=2, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match="needs equal ranks"):
        model.add_weighted_adapter(["a", "c"], [1, 1], "mix", combination_type="linear")
    with pytest.raises(ValueError, match="one weight per adapter"):
        model.add_weighted_adapter(["a", "b"], [1], "mix")
    with pytest.raises(ValueError, match="unknown adapter"):
        model.add_weighted_adapter(["a", "nope"], [1, 1], "mix")
    assert "mix" not in model.peft_config
