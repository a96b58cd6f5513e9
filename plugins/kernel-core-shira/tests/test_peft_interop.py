"""SHiRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, both ways: the entries are drawn from ``random_seed`` as peft draws them, saved as peft
saves them, and taken from the file on load (whatever mask made them); merging gives peft's
weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter. peft's SHiRA computes its forward with the updated weight, so that floor is zero
here and so the logits must be equal bit for bit.
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
from peft.utils.constants import TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING
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
    peft_load,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
    rewrite_adapter_tensors,
)
from kernel_core_sdk.tiny_models import tiny_llama
from kernel_core_shira.config import DEFAULT_TARGETS


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a SHiRA adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.ShiraConfig(**fields, init_weights=False), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"r": 2}),  # torch.Generator's default seed
    "own-knobs": (tiny_llama, {"r": 3, "random_seed": 11, "target_modules": ["q_proj", "k_proj", "up_proj", "down_proj"]}),
    "regex": (tiny_llama, {"r": 2, "random_seed": 5, "target_modules": r".*\.(k_proj|down_proj)"}),
    "all-linear": (tiny_llama, {"r": 1, "random_seed": 2, "target_modules": "all-linear"}),
    "modules-to-save": (tiny_llama, {"r": 2, "random_seed": 1, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("shira", **fields, init_weights=False)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.ShiraConfig().to_dict()), "adapter_config.json holds only keys peft's ShiraConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_peft_loads_in_ours(reference, build, tmp_path)


def test_the_entries_are_peft_s_and_saved_as_peft_saves_them(tmp_path: Path) -> None:
    fields = {"r": 2, "random_seed": 9, "target_modules": ["q_proj", "down_proj"]}
    _peft_made(tiny_llama, fields, tmp_path / "peft")
    ours = get_peft_model(tiny_llama(), get_config("shira", **fields, init_weights=False))  # drawn, not loaded
    randomise(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs, mine = (load_file(str(tmp_path / side / "adapter_model.safetensors")) for side in ("peft", "ours"))
    assert mine.keys() == theirs.keys()
    indices = [key for key in theirs if key.endswith("shira_indices")]
    assert len(indices) == 4
    for key in indices:
        assert mine[key].dtype == theirs[key].dtype == torch.int32 and torch.equal(mine[key], theirs[key]), key


def test_entries_come_from_the_file_not_the_seed(tmp_path: Path) -> None:
    """A file whose entries no seed gives (a user's own mask) loads with those entries, in peft and here."""
    reference = _peft_made(tiny_llama, {"r": 2, "random_seed": 9, "target_modules": ["q_proj"]}, tmp_path)
    key = "base_model.model.model.layers.0.self_attn.q_proj.shira_indices"
    own = torch.stack([torch.arange(64) // 4, (torch.arange(64) % 4) * 4]).to(torch.int32)  # every 4th column
    rewrite_adapter_tensors(tmp_path, lambda tensors: tensors.update({key: own}))
    theirs = peft_load(tiny_llama, tmp_path)
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(ours.base_model.model.model.layers[0].self_attn.q_proj.shira_indices["default"], own)
    assert torch.equal(logits(ours), logits(theirs)) and not torch.equal(logits(ours), logits(reference))


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
        assert torch.equal(value, expected[key]), f"{key} after unmerge differs from peft's"


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets, ranks and seeds) and the base, one per row, in
    one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"r": 3, "random_seed": 1, "target_modules": ["q_proj", "down_proj"]},
        "second": {"r": 2, "random_seed": 2, "target_modules": ["q_proj", "up_proj"]},
    }
    references = {}
    for seed, name in enumerate(fields):
        references[name] = _peft_made(tiny_llama, fields[name], tmp_path / name, seed)
    ours = assert_mixed_batch(tiny_llama, references, tmp_path)
    ours.delete_adapter("second")
    assert not [key for key in ours.state_dict() if key.endswith(".second")]


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING
    assert get_peft_model(tiny_llama(), get_config("shira", r=2)).peft_config["default"].target_modules == ["q_proj", "v_proj"]
