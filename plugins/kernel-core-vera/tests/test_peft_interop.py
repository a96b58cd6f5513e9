"""VeRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, both ways, with the projections saved and without them (then drawn again from
``projection_prng_key`` on both sides), and merge to peft's weights.

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
from peft.utils.constants import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    logits,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama
from kernel_core_vera.config import DEFAULT_TARGETS


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a VeRA adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.VeraConfig(**fields, init_weights=False), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"r": 8}),
    "own-knobs": (
        tiny_llama,  # projections sliced for three module shapes; dropout is off in eval
        {"r": 6, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"], "projection_prng_key": 11,
         "d_initial": 0.7, "vera_dropout": 0.2},
    ),
    "projections-not-saved": (
        tiny_llama, {"r": 4, "target_modules": ["k_proj", "o_proj", "gate_proj"], "projection_prng_key": 5, "save_projection": False}
    ),
    "regex": (tiny_llama, {"r": 4, "target_modules": r".*\.(k_proj|down_proj)"}),
    "layers-to-transform": (
        tiny_llama, {"r": 4, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "modules-to-save": (tiny_llama, {"r": 4, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
    "bias-vera-only": (lambda: tiny_llama(attention_bias=True), {"r": 4, "target_modules": ["q_proj", "k_proj"], "bias": "vera_only"}),
    "conv1d": (tiny_gpt2, {"r": 4, "target_modules": ["c_attn", "mlp.c_proj"], "fan_in_fan_out": True, "save_projection": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("vera", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.VeraConfig().to_dict()), "adapter_config.json holds only keys peft's VeraConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_peft_loads_in_ours(reference, build, tmp_path)


@pytest.mark.parametrize("save_projection", [True, False])
def test_projections_are_saved_once_per_model_only_when_asked(save_projection: bool, tmp_path: Path) -> None:
    fields = {"r": 4, "target_modules": ["q_proj", "down_proj"], "save_projection": save_projection}
    reference = _peft_made(tiny_llama, fields, tmp_path / "peft")
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")

    theirs, mine = (load_file(str(tmp_path / side / "adapter_model.safetensors")) for side in ("peft", "ours"))
    assert mine.keys() == theirs.keys()
    projections = sorted(key for key in mine if "vera_A" in key or "vera_B" in key)
    assert projections == (["base_model.vera_A", "base_model.vera_B"] if save_projection else [])
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
    # drawn from the key in both: the same matrices, as large as the largest wrapped module (down_proj: 32 in; 16 out)
    for name in ("vera_A", "vera_B"):
        assert torch.equal(getattr(ours.base_model, name)["default"], getattr(reference.base_model, name)["default"])
    assert ours.base_model.vera_A["default"].shape == (4, 32) and ours.base_model.vera_B["default"].shape == (16, 4)


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
    """Two peft-made adapters (different targets and ranks, one key) and the base, one per row,
    in one forward: each row is what peft gives with that adapter alone."""
    fields = {"first": {"r": 6, "target_modules": ["q_proj", "down_proj"]}, "second": {"r": 4, "target_modules": ["v_proj", "up_proj"]}}
    references = {}
    for seed, name in enumerate(fields):
        references[name] = _peft_made(tiny_llama, fields[name], tmp_path / name, seed)
    ours = assert_mixed_batch(tiny_llama, references, tmp_path)

    ours.delete_adapter("second")
    assert list(ours.base_model.vera_A) == ["first"] and list(ours.base_model.vera_B) == ["first"]


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    table = as_peft_table(DEFAULT_TARGETS)
    assert table == TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
    assert quiet(lambda: get_peft_model(tiny_llama(), get_config("vera", r=4))).peft_config["default"].target_modules == ["q_proj", "v_proj"]
