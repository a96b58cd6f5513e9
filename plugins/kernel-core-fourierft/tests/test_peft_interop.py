"""FourierFT adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the
same logits, both ways (the coefficients' places drawn again from ``random_loc_seed`` on each
side), and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter (two orders of the same float32 arithmetic), never a chosen tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_fourierft.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    logits,
    peft_made,
    peft_unloaded,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a FourierFT adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.FourierFTConfig(**fields), seed, folder)


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
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.FourierFTConfig().to_dict()), "adapter_config.json holds only keys peft's FourierFTConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_peft_loads_in_ours(reference, build, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    base = peft_unloaded(reference).state_dict()
    for key, value in ours.unload().state_dict().items():
        if key.endswith(".bias") and fields.get("bias", "none") != "none":
            continue  # trained biases are the adapter's, not the base's
        torch.testing.assert_close(value, base[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key} after unmerge: {m}")


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets, sizes and seeds) and the base, one per row, in
    one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"n_frequency": 40, "target_modules": ["q_proj", "down_proj"]},
        "second": {"n_frequency": 20, "random_loc_seed": 3, "scaling": 80.0, "target_modules": ["q_proj", "up_proj"]},
    }
    references = {}
    for seed, name in enumerate(fields):
        references[name] = _peft_made(tiny_llama, fields[name], tmp_path / name, seed)
    assert_mixed_batch(tiny_llama, references, tmp_path)


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    table = as_peft_table(DEFAULT_TARGETS)
    assert table == TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
    assert get_peft_model(tiny_gpt2(), get_config("fourierft", n_frequency=8)).peft_config["default"].target_modules == ["mlp.c_proj"]
