"""The peft-oracle helpers judge what they claim: a difference above the floor fails, a table
is written as peft's constants write it, a peft-made adapter changes the output."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch

from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_same, logits, noise_floor, peft_load, peft_made,
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
