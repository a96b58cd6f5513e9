"""MiSS adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny Llama twice; one side makes an adapter with non-default
options and randomised blocks (and biases or saved modules where the case trains them) and
saves it, the other loads it. "Same" is judged against peft's own noise floor: how far peft's
merged model is from its unmerged one on that adapter (zero for bat on a float32 model, whose
forward builds the merged weight: the logits must then be bit-equal). PEFT's MiSS adapts only
Linear layers, so GPT-2 is not a case.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_miss.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_mixed_batch, assert_ours_loads_in_peft,
    assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, logits, noise_floor, peft_made, quiet, randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    # PEFT's default r=64 needs layers at least that wide
    "architecture-defaults": (lambda: tiny_llama(hidden_size=64, intermediate_size=64), {}),
    "remainder-slice-regex": (tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj)", "r": 5, "miss_dropout": 0.1}),
    "mini": (tiny_llama, {"target_modules": ["q_proj", "up_proj", "down_proj"], "r": 4, "mini_r": 4, "init_weights": "mini"}),
    "bat": (tiny_llama, {"target_modules": ["q_proj", "k_proj", "down_proj"], "r": 4, "init_weights": "bat"}),
    "layers-to-transform": (
        tiny_llama, {"target_modules": ["q_proj", "up_proj"], "r": 8, "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "all-linear-excluded": (
        tiny_llama, {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"], "r": 6}
    ),
    "bfloat16-balance": (lambda: tiny_llama(attention_bias=True).to(torch.bfloat16), {"target_modules": ["q_proj", "down_proj"], "r": 3}),
    "bfloat16-bat": (
        lambda: tiny_llama(attention_bias=True).to(torch.bfloat16), {"target_modules": ["q_proj", "up_proj"], "r": 8, "init_weights": "bat"}
    ),
    "modules-to-save": (tiny_llama, {"target_modules": ["v_proj"], "r": 2, "modules_to_save": ["lm_head"]}),
    "bias-miss-only": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["q_proj", "k_proj"], "r": 4, "bias": "MiSS_only"}
    ),
    "bias-all-bat": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["v_proj", "up_proj"], "r": 4, "init_weights": "bat", "bias": "all"}
    ),
}


def _peft_made(build: Callable[[], torch.nn.Module], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    # random blocks: False for balance (peft's random init); bat and mini start at zero and are randomised
    return peft_made(build, peft.MissConfig(**({"init_weights": False} | fields)), seed, folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("miss", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # only keys peft's MissConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    assert {p.dtype for n, p in ours.named_parameters() if ".miss_block." in n} == {torch.float32}
    peft_shapes = {k: v.shape for k, v in reference.state_dict().items() if "miss_" in k}
    assert {k: v.shape for k, v in ours.state_dict().items() if "miss_" in k} == peft_shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and unmerging gives peft's unmerged ones
    (bat's inverse restores the base only up to rounding: peft's own round trip is the oracle)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    round_trip = quiet(lambda: copy.deepcopy(reference))
    quiet(lambda: (round_trip.merge_adapter(), round_trip.unmerge_adapter()))
    expected = {k: v for k, v in round_trip.state_dict().items() if ".base_layer." in k}  # the wrapped layers'
    restored = ours.state_dict()
    assert expected
    for key, value in expected.items():
        assert torch.equal(restored[key], value), f"{key}: unmerged weight differs from peft's"


def test_training_forward_with_dropout_equals_peft(tmp_path: Path) -> None:
    """miss_dropout acts only while training; with the same random draws a training forward
    gives peft's logits (the input is padded, then dropped out, as peft does)."""
    fields = {"target_modules": ["q_proj", "v_proj", "down_proj"], "r": 5, "miss_dropout": 0.4}
    reference = _peft_made(tiny_llama, fields, tmp_path)
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    floor = noise_floor(reference)
    evaluated = logits(ours)
    outputs = []
    for model in (reference, ours):
        model.train()
        torch.manual_seed(11)
        outputs.append(logits(model))
    assert_same(outputs[1], outputs[0], floor)
    assert (outputs[1] - evaluated).abs().max() > 1e-3, "the dropout must change a training forward"
    ours.eval()
    assert torch.equal(logits(ours), evaluated), "no dropout outside training"


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """A balance and a bat adapter and the base, one per row, in one forward: each row is what
    peft gives with that adapter alone."""
    fields = {
        "balance": {"target_modules": ["k_proj", "down_proj"], "r": 3},
        "bat": {"target_modules": ["k_proj", "up_proj"], "r": 4, "init_weights": "bat"},
    }
    references = {}
    for seed, (name, options) in enumerate(fields.items()):
        references[name] = _peft_made(lambda: tiny_llama(attention_bias=True), options, tmp_path / name, seed)
    assert_mixed_batch(lambda: tiny_llama(attention_bias=True), references, tmp_path)


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING
