"""P-tuning adapters move between kernel-core and Hugging Face ``peft`` (the oracle) both ways with
the same logits and the same greedy ``generate`` tokens, with the MLP and the LSTM encoder (the
file holds the encoder's output table, as PEFT writes it); the saved config is one peft reads
without a warning.

"Same" is bit-equal logits: both sides put the same table before the input's embeddings, and
prompt learning has no merged form to measure a noise floor on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import (
    assert_peft_reads_config,
    assert_same_prompt_learning,
    peft_load,
    peft_made,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "mlp": (tiny_llama, {"num_virtual_tokens": 5}),
    "mlp-hidden": (tiny_llama, {"num_virtual_tokens": 3, "encoder_hidden_size": 24}),
    "lstm": (tiny_llama, {"num_virtual_tokens": 6, "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 10,
                          "encoder_num_layers": 3, "encoder_dropout": 0.2}),
    "lstm-gpt2": (tiny_gpt2, {"num_virtual_tokens": 4, "encoder_reparameterization_type": "LSTM", "encoder_num_layers": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    peft_made(build, peft.PromptEncoderConfig(task_type="CAUSAL_LM", **fields), folder=tmp_path)
    ours = quiet(lambda: PeftModel.from_pretrained(build(), tmp_path))
    assert not any(p.requires_grad for p in ours.parameters())
    assert list(ours.base_model.prompt_encoder["default"].state_dict()) == ["embedding.weight"], "a table alone, as peft loads it"
    assert_same_prompt_learning(ours, peft_load(build, tmp_path))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("p-tuning", **fields)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path)
    assert_peft_reads_config(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.PromptEncoderConfig().to_dict()), "adapter_config.json holds only keys peft's config has"
    table = load_file(str(tmp_path / "adapter_model.safetensors"))["prompt_embeddings"]
    with torch.no_grad():
        assert torch.equal(table, ours.base_model.prompt_encoder["default"].table()), "the file holds the encoder's output"
    assert_same_prompt_learning(ours, peft_load(build, tmp_path))


def test_a_file_loads_for_inference_only(tmp_path: Path) -> None:
    """The file holds the encoder's output, not the encoder: there is nothing to train from
    (peft refuses a trainable prompt-learning load too)."""
    peft_made(tiny_llama, peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), folder=tmp_path)
    with pytest.raises(Exception, match=r"not the encoder \(mlp_head.*load it for inference"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
