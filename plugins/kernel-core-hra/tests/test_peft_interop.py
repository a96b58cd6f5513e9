"""HRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny model twice; one side makes an adapter with non-default
options and randomised vectors (and biases or saved modules where the case trains them) and
saves it, the other loads it. "Same" is judged against peft's own noise floor: how far peft's
merged model is from its unmerged one on that adapter. PEFT builds the adapted weight ``W H`` in
every forward, as merging does, so on a float32 model that floor is often zero and the logits
must be bit-equal. (PEFT's HRA has no Conv1D layer, so GPT-2 is not a case.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_hra.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_mixed_batch, assert_ours_loads_in_peft,
    assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, logits, noise_floor, peft_load, peft_made,
    peft_merged, quiet, randomise,
)
from kernel_core_sdk.tiny_models import TinyConvNet, images, tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {}),
    "gram-schmidt": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"], "r": 4, "apply_GS": True}),
    "odd-rank-regex": (tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj)", "r": 3}),
    "layers-to-transform": (
        tiny_llama, {"target_modules": ["q_proj", "up_proj"], "r": 2, "layers_to_transform": [0], "layers_pattern": "layers"}
    ),
    "all-linear-excluded": (
        tiny_llama, {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"], "r": 6}
    ),
    "bfloat16-base": (
        lambda: tiny_llama(attention_bias=True).to(torch.bfloat16), {"target_modules": ["q_proj", "down_proj"], "r": 4}
    ),
    "modules-to-save": (tiny_llama, {"target_modules": ["v_proj"], "r": 2, "modules_to_save": ["lm_head"]}),
    "bias-hra-only": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["q_proj", "k_proj"], "r": 4, "bias": "hra_only"}
    ),
    "bias-all-gram-schmidt": (
        lambda: tiny_llama(attention_bias=True),
        {"target_modules": ["v_proj", "up_proj"], "r": 5, "apply_GS": True, "bias": "all"},
    ),
}


def _peft_made(build: Callable[[], torch.nn.Module], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    return peft_made(build, peft.HRAConfig(**fields, init_weights=False), seed, folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("hra", **fields, init_weights=False)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # only keys peft's HRAConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    assert {p.dtype for n, p in ours.named_parameters() if ".hra_u." in n} == {torch.float32}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and unmerging gives peft's unmerged ones
    (``H^T`` undoes ``H`` only up to rounding: peft's own round trip is the oracle)."""
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


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (one Gram-Schmidt) and the base, one per row, in one forward:
    each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "r": 4},
        "second": {"target_modules": ["k_proj", "up_proj"], "r": 3, "apply_GS": True},
    }
    references = {}
    for seed, (name, options) in enumerate(fields.items()):
        references[name] = _peft_made(lambda: tiny_llama(attention_bias=True), options, tmp_path / name, seed)
    assert_mixed_batch(lambda: tiny_llama(attention_bias=True), references, tmp_path)


def test_two_adapters_active_and_merged_equal_peft(tmp_path: Path) -> None:
    """With two adapters active on a layer, peft computes with ``W H_a H_b``, as merging them in
    order gives; ours does both, with peft's merged weights."""
    options = {"target_modules": ["q_proj", "down_proj"], "r": 4}
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.HRAConfig(**options, init_weights=False)).eval())
    quiet(lambda: reference.add_adapter("second", peft.HRAConfig(**options, apply_GS=True, init_weights=False)))
    floors = []
    for name in ("default", "second"):
        reference.set_adapter(name)
        randomise(reference, seed=len(floors))
        floors.append(noise_floor(reference))
    reference.base_model.set_adapter(["default", "second"])
    both_active = logits(reference)
    quiet(lambda: reference.save_pretrained(str(tmp_path)))

    ours = quiet(lambda: PeftModel.from_pretrained(tiny_llama(), tmp_path))
    ours.load_adapter(tmp_path / "second", "second")
    layers = [module for module in ours.modules() if hasattr(module, "hra_u")]
    for layer in layers:
        layer.set_adapter(["default", "second"])
    assert_same(logits(ours), both_active, max(floors))

    ours.merge_adapter(["default", "second"])
    quiet(lambda: reference.merge_adapter(["default", "second"]))
    assert_same(logits(ours), logits(reference), max(floors))
    expected = {k: v for k, v in reference.state_dict().items() if ".base_layer." in k}
    got = ours.state_dict()
    assert len(expected) == len(layers) == 4
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key}: merged weight differs from peft's"


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING


CONV_CASES: dict[str, dict[str, Any]] = {
    "reflections": {"target_modules": ["conv1", "conv3", "head"], "r": 4},
    "gram-schmidt": {"target_modules": r"conv[13]|head", "r": 3, "apply_GS": True},
}


def _conv_out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(images())


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_both_ways_and_merged(case: str, tmp_path: Path) -> None:
    """Conv2d targets (3x3 and 1x1; PEFT refuses grouped ones): files both ways with peft's
    outputs, merged weights equal to peft's."""
    fields = CONV_CASES[case]
    reference = _peft_made(TinyConvNet, fields, tmp_path / "peft")
    merged_reference = peft_merged(reference)
    floor = noise_floor(reference, _conv_out)
    ours = PeftModel.from_pretrained(TinyConvNet(), tmp_path / "peft")
    assert_changes_output(_conv_out(reference), _conv_out(TinyConvNet()))
    assert_same(_conv_out(ours), _conv_out(reference), floor)
    merged = ours.merge_and_unload().state_dict()
    for key, value in merged_reference.state_dict().items():
        assert torch.equal(merged[key], value), f"{key}: merged weight differs from peft's"

    ours = get_peft_model(TinyConvNet(), get_config("hra", **fields, init_weights=False)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path / "ours")
    reference = peft_load(TinyConvNet, tmp_path / "ours")
    assert_same(_conv_out(ours), _conv_out(reference), noise_floor(reference, _conv_out))
