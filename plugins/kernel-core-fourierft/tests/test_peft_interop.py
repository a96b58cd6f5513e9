"""FourierFT adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the
same logits, both ways (the coefficients' places drawn again from ``random_loc_seed`` on each
side), and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter (two orders of the same float32 arithmetic), never a chosen tolerance.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import BASE_ADAPTER, PeftModel, get_config, get_peft_model
from kernel_core_fourierft.config import DEFAULT_TARGETS
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama, token_ids


def randomise(model: torch.nn.Module, seed: int = 3) -> None:
    """Move every trainable tensor off its init, so that the adapter (and any saved copy) matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def logits(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids(), **kwargs).logits


def quiet(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about fan_in_fan_out on Conv1D
        return call()


def peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a FourierFT adapter made with ``fields`` and randomised, saved to ``folder``."""
    reference = quiet(lambda: peft.get_peft_model(build(), peft.FourierFTConfig(**fields)).eval())
    randomise(reference, seed)
    quiet(lambda: reference.save_pretrained(str(folder)))
    return reference


def peft_load(build: Callable[[], PreTrainedModel], folder: Path) -> peft.PeftModel:
    return quiet(lambda: peft.PeftModel.from_pretrained(build(), str(folder)).eval())


def peft_merged(reference: peft.PeftModel) -> PreTrainedModel:
    """A copy of ``reference`` with its adapter merged by peft (``reference`` is left as it is)."""
    return quiet(lambda: copy.deepcopy(reference).merge_and_unload())


def noise_floor(reference: peft.PeftModel) -> float:
    """How far peft's merged logits are from its unmerged ones, on the same adapter."""
    return (logits(peft_merged(reference)) - logits(reference)).abs().max().item()


def assert_same(ours: torch.Tensor, reference: torch.Tensor, floor: float) -> None:
    difference = (ours - reference).abs().max().item()
    assert difference <= floor, f"ours differs from peft by {difference:.3g}, more than peft's own noise floor {floor:.3g}"


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"n_frequency": 64}),
    "own-knobs": (
        tiny_llama,
        {"n_frequency": 40, "scaling": 37.5, "random_loc_seed": 12, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
         "n_frequency_pattern": {"down_proj": 90, "layers.1.self_attn.v_proj": 7}},
    ),
    "regex-excluded": (
        tiny_llama, {"n_frequency": 30, "target_modules": r".*\.(k_proj|o_proj|gate_proj)", "exclude_modules": ["model.layers.0.mlp.gate_proj"]}
    ),
    "layers-to-transform": (
        tiny_llama, {"n_frequency": 30, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "modules-to-save": (tiny_llama, {"n_frequency": 30, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
    "bias-fourier-only": (
        lambda: tiny_llama(attention_bias=True), {"n_frequency": 30, "target_modules": ["q_proj", "k_proj"], "bias": "fourier_only"}
    ),
    "conv1d": (
        tiny_gpt2, {"n_frequency": 50, "target_modules": ["c_attn", "mlp.c_proj"], "fan_in_fan_out": True, "n_frequency_pattern": {"c_attn": 100}}
    ),
    "conv1d-defaults": (tiny_gpt2, {"n_frequency": 50}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("fourierft", **fields, init_weights=False)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.FourierFTConfig().to_dict()), "adapter_config.json holds only keys peft's FourierFTConfig has"
    reference = peft_load(build, tmp_path)

    assert (logits(ours) - logits(build())).abs().max() > 1e-3, "the adapter must change the output"
    assert_same(logits(ours), logits(reference), noise_floor(reference))


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = peft_made(build, fields, tmp_path)

    ours = PeftModel.from_pretrained(build(), tmp_path)

    assert_same(logits(ours), logits(reference), noise_floor(reference))
    assert not any(p.requires_grad for p in ours.parameters()), "loaded for inference: nothing trains"


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = peft_made(build, fields, tmp_path)
    ours = PeftModel.from_pretrained(build(), tmp_path)

    unmerged = logits(ours)
    ours.merge_adapter()
    merged_logits = logits(ours)
    ours.unmerge_adapter()
    base = build().state_dict()
    for key, value in ours.unload().state_dict().items():
        if key.endswith(".bias") and fields.get("bias", "none") != "none":
            continue  # trained biases are the adapter's, not the base's
        torch.testing.assert_close(value, base[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key} after unmerge: {m}")

    ours = PeftModel.from_pretrained(build(), tmp_path)
    merged = ours.merge_and_unload().state_dict()
    expected = peft_merged(reference).state_dict()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(merged[key], value), f"{key}: merged weight differs from peft's"
    assert_same(merged_logits, unmerged, noise_floor(reference))


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets, sizes and seeds) and the base, one per row, in
    one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"n_frequency": 40, "target_modules": ["q_proj", "down_proj"]},
        "second": {"n_frequency": 20, "random_loc_seed": 3, "scaling": 80.0, "target_modules": ["q_proj", "up_proj"]},
    }
    references, floors = {}, []
    for seed, name in enumerate(fields):
        reference = peft_made(tiny_llama, fields[name], tmp_path / name, seed)
        references[name] = logits(reference)
        floors.append(noise_floor(reference))
    references[BASE_ADAPTER] = logits(tiny_llama())

    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "first", adapter_name="first")
    ours.load_adapter(tmp_path / "second", "second")
    rows = ["second", BASE_ADAPTER, "first"]
    mixed = logits(ours, adapter_names=rows)
    for i, name in enumerate(rows):
        assert_same(mixed[i], references[name][i], max(floors))
    assert (references["first"] - references["second"]).abs().max() > 1e-3, "the two adapters must differ"


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    table = {key: value if isinstance(value, str) else list(value) for key, value in DEFAULT_TARGETS.items()}
    assert table == TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
    assert get_peft_model(tiny_gpt2(), get_config("fourierft", n_frequency=8)).peft_config["default"].target_modules == ["mlp.c_proj"]
