"""Prompt-tuning adapters move between kernel-core and Hugging Face ``peft`` (the oracle) both
ways with the same logits and the same greedy ``generate`` tokens, for each init and several
virtual-token counts; the saved config is one peft reads without a warning.

"Same" is bit-equal logits: both sides do the same float arithmetic (the table before the
input's embeddings), and prompt learning has no merged form to measure a noise floor on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import (
    assert_peft_reads_config,
    assert_same_prompt_learning,
    logits,
    peft_load,
    peft_made,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama

CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "random": lambda folder: {"num_virtual_tokens": 5},
    "sample-vocab": lambda folder: {"num_virtual_tokens": 3, "prompt_tuning_init": "SAMPLE_VOCAB"},
    "text": lambda folder: {"num_virtual_tokens": 9, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "w3 w9 w27",
                            "tokenizer_name_or_path": str(folder), "tokenizer_kwargs": {"use_fast": True}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path, tokenizer_folder: Path) -> None:
    fields = CASES[case](tokenizer_folder)
    reference = peft_made(tiny_llama, peft.PromptTuningConfig(task_type="CAUSAL_LM", **fields), folder=tmp_path)
    ours = quiet(lambda: PeftModel.from_pretrained(tiny_llama(), tmp_path))
    assert not any(p.requires_grad for p in ours.parameters())
    assert_same_prompt_learning(ours, reference)
    assert ours.peft_config["default"].to_dict().items() >= {k: v for k, v in fields.items()}.items()


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path, tokenizer_folder: Path) -> None:
    fields = CASES[case](tokenizer_folder)
    ours = get_peft_model(tiny_llama(), get_config("prompt-tuning", **fields)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path)
    assert_peft_reads_config(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.PromptTuningConfig().to_dict()), "adapter_config.json holds only keys peft's config has"
    reference = peft_load(tiny_llama, tmp_path)
    assert (logits(ours)[:, -7:] - logits(tiny_llama())).abs().max() > 1e-3, "the prompt must change the output"
    assert_same_prompt_learning(ours, reference)


def test_a_trainable_load_trains_the_table(tmp_path: Path) -> None:
    """is_trainable: the loaded table is the trained parameter (peft refuses to load prompt
    learning trainable; a table, which is all prompt tuning trains, can go on training)."""
    reference = peft_made(tiny_llama, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), folder=tmp_path)
    with pytest.raises(ValueError, match="trainable"):
        peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path), is_trainable=True)
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["base_model.prompt_encoder.default.embedding.weight"]
    assert torch.equal(ours.base_model.prompt_encoder["default"].table(), reference.prompt_encoder["default"].embedding.weight)
