"""C3A adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, both ways, and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter (two orders of the same float32 arithmetic), never a chosen tolerance.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import get_config, get_peft_model
from kernel_core_c3a.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a C3A adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.C3AConfig(**fields), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"block_size": 8}),
    "own-knobs": (
        tiny_llama,
        {"block_size": 4, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"], "init_weights": "gaussian",
         "block_size_pattern": {"down_proj": 16, "layers.1.self_attn.v_proj": 2}},
    ),
    "kaiming": (tiny_llama, {"block_size": 8, "target_modules": ["k_proj", "o_proj"], "init_weights": "kaiming_uniform"}),
    "regex": (tiny_llama, {"block_size": 8, "target_modules": r".*\.(k_proj|gate_proj)"}),
    "layers-to-transform": (
        tiny_llama, {"block_size": 8, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "modules-to-save": (tiny_llama, {"block_size": 8, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
    "bias-c3a-only": (lambda: tiny_llama(attention_bias=True), {"block_size": 4, "target_modules": ["q_proj", "k_proj"], "bias": "c3a_only"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("c3a", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.C3AConfig().to_dict()), "adapter_config.json holds only keys peft's C3AConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_peft_loads_in_ours(reference, build, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives what peft's
    merge then unmerge gives, bit for bit."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    round_trip = copy.deepcopy(reference)
    round_trip.merge_adapter()
    quiet(round_trip.unmerge_adapter)
    expected = peft_unloaded(round_trip).state_dict()
    for key, value in ours.unload().state_dict().items():
        if key.endswith(".bias") and fields.get("bias", "none") != "none":
            continue  # trained biases are the adapter's, not the base's
        assert torch.equal(value, expected[key]), f"{key} after unmerge differs from peft's"


def test_initial_kernels_are_drawn_as_peft_draws_them() -> None:
    """With one seed, each init_weights gives peft's initial kernels (True: zero)."""
    for init in (True, False, "xavier_uniform", "kaiming_uniform", "gaussian"):
        fields = {"block_size": 4, "target_modules": ["q_proj", "down_proj"], "init_weights": init}
        torch.manual_seed(0)
        theirs = quiet(lambda fields=fields: peft.get_peft_model(tiny_llama(seed=1), peft.C3AConfig(**fields)))
        torch.manual_seed(0)
        ours = get_peft_model(tiny_llama(seed=1), get_config("c3a", **fields))
        mine = {k: v for k, v in ours.state_dict().items() if "c3a_kernel" in k}
        expected = {k: v for k, v in theirs.state_dict().items() if "c3a_kernel" in k}
        assert mine.keys() == expected.keys() and len(mine) == 4
        for key, value in expected.items():
            assert torch.equal(mine[key], value), (init, key)


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets and block sizes) and the base, one per row, in
    one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"block_size": 8, "target_modules": ["q_proj", "down_proj"]},
        "second": {"block_size": 4, "target_modules": ["q_proj", "up_proj"], "init_weights": "gaussian"},
    }
    references = {}
    for seed, name in enumerate(fields):
        references[name] = _peft_made(tiny_llama, fields[name], tmp_path / name, seed)
    assert_mixed_batch(tiny_llama, references, tmp_path)


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING
    assert get_peft_model(tiny_llama(), get_config("c3a", block_size=8)).peft_config["default"].target_modules == ["q_proj", "v_proj"]
