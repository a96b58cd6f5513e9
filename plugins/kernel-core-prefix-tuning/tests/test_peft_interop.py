"""Prefix-tuning adapters move between kernel-core and Hugging Face ``peft`` (the oracle) both
ways with the same logits and the same greedy ``generate`` tokens: a plain prefix table and one
computed by the projection MLP, on a Llama with grouped-query attention, one without, GPT-2, and a Mistral
whose sliding window is shorter than the prefix and the prompt;
the saved config is one peft reads without a warning.

"Same" is bit-equal logits: both sides put the same keys and values in the cache, and prompt
learning has no merged form to measure a noise floor on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM, PreTrainedModel

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

def tiny_mistral() -> PreTrainedModel:
    """A 2-layer Mistral whose sliding window (5) is shorter than prefix and prompt together."""
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, sliding_window=5)
    return MistralForCausalLM(config).eval()


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "table": (tiny_llama, {"num_virtual_tokens": 5}),
    "projection": (tiny_llama, {"num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 24}),
    "projection-zero-init": (tiny_llama, {"num_virtual_tokens": 6, "prefix_projection": True, "init_weights": "zero"}),
    "multi-head-kv": (lambda: tiny_llama(num_key_value_heads=2), {"num_virtual_tokens": 4}),
    "gpt2": (tiny_gpt2, {"num_virtual_tokens": 4, "prefix_projection": True}),
    "sliding-window": (tiny_mistral, {"num_virtual_tokens": 3}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    peft_made(build, peft.PrefixTuningConfig(task_type="CAUSAL_LM", **fields), folder=tmp_path)
    ours = quiet(lambda: PeftModel.from_pretrained(build(), tmp_path))
    assert not any(p.requires_grad for p in ours.parameters())
    assert list(ours.base_model.prompt_encoder["default"].state_dict()) == ["embedding.weight"], "a table alone, as peft loads it"
    # against peft's load of the file: peft's training-time model runs its projection on a batch
    # of copies, which rounds differently from the one copy it saves
    assert_same_prompt_learning(ours, peft_load(build, tmp_path))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("prefix-tuning", **fields)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path)
    assert_peft_reads_config(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.PrefixTuningConfig().to_dict()), "adapter_config.json holds only keys peft's config has"
    assert_same_prompt_learning(ours, peft_load(build, tmp_path))


def test_a_projected_prefix_loads_for_inference_only(tmp_path: Path) -> None:
    """The file holds the projection's output, not the MLP: there is nothing to train from."""
    peft_made(tiny_llama, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True), folder=tmp_path)
    with pytest.raises(Exception, match=r"not the encoder \(transform.*load it for inference"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
