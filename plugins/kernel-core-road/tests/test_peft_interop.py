"""RoAd adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny Llama twice; one side makes an adapter with non-default
options and random angles and scales (and saved modules where the case has them) and saves it,
the other loads it. "Same" is judged against peft's own noise floor: how far peft's merged model
is from its unmerged one on that adapter. PEFT's RoAd adapts only Linear layers, so GPT-2 is not
a case, and its config has neither ``exclude_modules`` nor the layer filters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_road.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_mixed_batch, assert_ours_loads_in_peft,
    assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, logits, noise_floor, peft_made, quiet, randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    # PEFT's default group_size=64 needs outputs that wide (q_proj, v_proj)
    "architecture-defaults": (lambda: tiny_llama(hidden_size=64, num_key_value_heads=2), {}),
    "road-2-regex": (tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj)", "variant": "road_2", "group_size": 8}),
    "road-4": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"], "variant": "road_4", "group_size": 4}),
    "all-linear": (tiny_llama, {"target_modules": "all-linear", "variant": "road_2", "group_size": 8}),
    "biases": (lambda: tiny_llama(attention_bias=True), {"target_modules": ["q_proj", "k_proj", "v_proj"], "group_size": 2}),
    "bfloat16-base": (
        lambda: tiny_llama(attention_bias=True).to(torch.bfloat16),
        {"target_modules": ["q_proj", "up_proj"], "variant": "road_4", "group_size": 8},
    ),
    "modules-to-save": (tiny_llama, {"target_modules": ["v_proj"], "group_size": 4, "modules_to_save": ["lm_head"]}),
}


def _peft_made(build: Callable[[], torch.nn.Module], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    return peft_made(build, peft.RoadConfig(**fields, init_weights=False), seed, folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("road", **fields, init_weights=False)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # only keys peft's RoadConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    assert {p.dtype for n, p in ours.named_parameters() if ".road_" in n} == {torch.float32}
    peft_shapes = {k: v.shape for k, v in reference.state_dict().items() if "road_" in k}
    assert {k: v.shape for k, v in ours.state_dict().items() if "road_" in k} == peft_shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights and biases, and unmerging gives peft's
    unmerged ones (``R^-1`` restores the base only up to rounding: peft's own round trip is the
    oracle)."""
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
    """Two peft-made adapters (different variants and groups) and the base, one per row, in one
    forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "group_size": 4},
        "second": {"target_modules": ["k_proj", "up_proj"], "variant": "road_4", "group_size": 8},
    }
    references = {}
    for seed, (name, options) in enumerate(fields.items()):
        references[name] = _peft_made(lambda: tiny_llama(attention_bias=True), options, tmp_path / name, seed)
    assert_mixed_batch(lambda: tiny_llama(attention_bias=True), references, tmp_path)


def test_two_adapters_active_and_merged_equal_peft(tmp_path: Path) -> None:
    """With two adapters active on a layer, peft turns the output by the first, then the second,
    as merging them in order does; ours does both, with peft's merged weights."""
    options = {"target_modules": ["q_proj", "down_proj"], "group_size": 4}
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(attention_bias=True), peft.RoadConfig(**options, init_weights=False)).eval())
    quiet(lambda: reference.add_adapter("second", peft.RoadConfig(**options, variant="road_2", init_weights=False)))
    floors = []
    for name in ("default", "second"):
        reference.set_adapter(name)
        randomise(reference, seed=len(floors))
        floors.append(noise_floor(reference))
    reference.base_model.set_adapter(["default", "second"])
    both_active = logits(reference)
    quiet(lambda: reference.save_pretrained(str(tmp_path)))

    ours = quiet(lambda: PeftModel.from_pretrained(tiny_llama(attention_bias=True), tmp_path))
    ours.load_adapter(tmp_path / "second", "second")
    layers = [module for module in ours.modules() if hasattr(module, "road_theta")]
    for layer in layers:
        layer.set_adapter(["default", "second"])
    assert_same(logits(ours), both_active, max(floors))

    ours.merge_adapter(["default", "second"])
    quiet(lambda: reference.merge_adapter(["default", "second"]))
    assert_same(logits(ours), logits(reference), max(floors))
    expected = {k: v for k, v in reference.state_dict().items() if ".base_layer." in k}
    got = ours.state_dict()
    assert len(layers) == 4 and len(expected) == 6  # q_proj has a bias, down_proj none
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key}: merged weight differs from peft's"


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING
