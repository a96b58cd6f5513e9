"""The peft-oracle helpers judge what they claim: a difference above the floor fails, a table
is written as peft's constants write it, a peft-made adapter changes the output."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_ours_loads_in_peft, assert_peft_loads_in_ours,
    assert_same, edit_adapter_config, logits, noise_floor, peft_load, peft_made, rewrite_adapter_tensors,
)
from kernel_core_sdk.tiny_models import tiny_llama


def test_assert_same_holds_ours_to_the_floor() -> None:
    assert_same(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), 0.5)
    with pytest.raises(AssertionError, match="more than peft's own noise floor"):
        assert_same(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.6]), 0.5)


def test_tables_are_written_as_peft_writes_them() -> None:
    assert as_peft_table({"llama": ("q_proj", "v_proj"), "gemma4": r".*\.q_proj"}) == {
        "llama": ["q_proj", "v_proj"], "gemma4": r".*\.q_proj"
    }


def test_a_peft_made_adapter_is_saved_and_matters(tmp_path: Path) -> None:
    config = peft.LoraConfig(r=2, target_modules=["q_proj"])
    reference = peft_made(tiny_llama, config, folder=tmp_path)
    assert_changes_output(logits(reference), logits(tiny_llama()))
    assert 0.0 <= noise_floor(reference) < 1e-3
    assert torch.equal(logits(peft_load(tiny_llama, tmp_path)), logits(reference))
    with pytest.raises(AssertionError, match="the adapter must change the output"):
        assert_changes_output(logits(tiny_llama()), logits(tiny_llama()))


def test_adapter_files_are_edited_in_place(tmp_path: Path) -> None:
    reference = peft_made(tiny_llama, peft.LoraConfig(r=2, target_modules=["q_proj"]), folder=tmp_path)
    key = next(k for k in reference.state_dict() if "lora_A" in k).replace(".default", "")
    rewrite_adapter_tensors(tmp_path, lambda tensors: tensors.update({key: torch.zeros(3, 1)}))
    edit_adapter_config(tmp_path, r=7)
    assert load_file(str(tmp_path / "adapter_model.safetensors"))[key].shape == (3, 1)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 7


def test_an_adapter_goes_both_ways_with_the_ia3_plugin(tmp_path: Path) -> None:
    config = peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    reference = peft_made(tiny_llama, config, folder=tmp_path / "peft")
    ours = assert_peft_loads_in_ours(reference, tiny_llama, tmp_path / "peft")
    assert assert_ours_loads_in_peft(ours, tiny_llama, tmp_path / "ours") is not None
    unmerged = assert_merges_as_peft(reference, tiny_llama, tmp_path / "peft")
    assert_same(logits(unmerged), logits(reference), noise_floor(reference))
