"""OFT adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny Llama twice; one side makes an adapter with non-default
options and randomised rotations (and biases or saved modules where the case trains them) and
saves it, the other loads it. "Same" is judged against peft's own noise floor: how far peft's
merged model is from peft's unmerged one on that adapter. Ours must be no farther from peft than
that. (PEFT's OFT has no Conv1D layer, so GPT-2 is not a case.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from packaging.version import Version
from peft.utils.constants import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_oft.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_mixed_batch, assert_ours_loads_in_peft,
    assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, logits, noise_floor, peft_made, quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {}),
    "block-size": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"], "oft_block_size": 4}),
    "r-exact-cayley": (
        tiny_llama, {"target_modules": ["k_proj", "up_proj"], "r": 4, "oft_block_size": 0, "use_cayley_neumann": False}
    ),
    "regex-neumann-terms": (
        tiny_llama, {"target_modules": r".*\.(q_proj|gate_proj)", "oft_block_size": 8, "num_cayley_neumann_terms": 3}
    ),
    "coft-block-share": (
        tiny_llama,
        {"target_modules": ["q_proj", "o_proj"], "oft_block_size": 4, "coft": True, "eps": 0.05, "block_share": True},
    ),
    "layers-dropout": (
        tiny_llama,
        {"target_modules": ["q_proj", "down_proj"], "oft_block_size": 8, "layers_to_transform": [1],
         "layers_pattern": "layers", "module_dropout": 0.1},
    ),
    "all-linear-excluded": (
        tiny_llama,
        {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"], "oft_block_size": 2},
    ),
    "embedding": (tiny_llama, {"target_modules": ["embed_tokens", "v_proj"], "oft_block_size": 4}),
    "embedding-exact-shared": (
        tiny_llama, {"target_modules": ["embed_tokens"], "oft_block_size": 8, "block_share": True, "use_cayley_neumann": False}
    ),
    "bfloat16": (
        lambda: tiny_llama(attention_bias=True).to(torch.bfloat16),
        {"target_modules": ["embed_tokens", "q_proj", "down_proj"], "oft_block_size": 4},
    ),
    "modules-to-save": (tiny_llama, {"target_modules": ["v_proj"], "oft_block_size": 4, "modules_to_save": ["lm_head"]}),
    "bias-oft-only": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["q_proj", "k_proj"], "oft_block_size": 4, "bias": "oft_only"}
    ),
    "bias-all": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["v_proj", "up_proj"], "oft_block_size": 16, "bias": "all"}
    ),
}


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    reference = peft_made(build, peft.OFTConfig(**fields, init_weights=False), seed)
    logits(reference)  # COFT projects its rotations on the first forward; save them as they are used
    quiet(lambda: reference.save_pretrained(str(folder)))
    return reference


def _ours(build: Callable[[], PreTrainedModel], folder: Path, **kwargs: Any) -> PeftModel:
    return quiet(lambda: PeftModel.from_pretrained(build(), folder, **kwargs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = quiet(lambda: get_peft_model(build(), get_config("oft", **fields, init_weights=False))).eval()
    randomise(ours)
    logits(ours)  # COFT projects its rotations on the first forward; save them as they are used
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # only keys peft's OFTConfig has, and the Neumann series of today's peft


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    assert_peft_loads_in_ours(reference, build, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and unmerging gives peft's unmerged ones
    (the inverse in float32 is not exact: peft's own round trip is the oracle)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    round_trip = quiet(lambda: copy.deepcopy(reference))
    round_trip.merge_adapter()
    round_trip.unmerge_adapter()
    expected = {k: v for k, v in round_trip.state_dict().items() if ".base_layer." in k}  # the wrapped layers'
    restored = ours.state_dict()
    assert expected
    for key, value in expected.items():
        assert torch.equal(restored[key], value), f"{key}: unmerged weight differs from peft's"


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different block layouts) and the base, one per row, in one
    forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "oft_block_size": 4},
        "second": {"target_modules": ["k_proj", "up_proj"], "r": 2, "oft_block_size": 0, "use_cayley_neumann": False},
    }
    references = {}
    for seed, (name, options) in enumerate(fields.items()):
        references[name] = _peft_made(tiny_llama, options, tmp_path / name, seed)
    assert_mixed_batch(tiny_llama, references, tmp_path)


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    expected = as_peft_table(DEFAULT_TARGETS)
    assert expected == TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING


def test_two_adapters_merged_compute_as_both_active(tmp_path: Path) -> None:
    """Rotations do not commute. With two adapters active on a layer, peft and ours rotate the
    input by the first, then the second; merged, ours computes the same, and its weights are
    peft's merged bit for bit: peft 0.22 merges them last one first, as ours; older peft merges
    in the given order (its merged model does not compute as its adapters did active), so there
    it is given the reverse order."""
    options = {"target_modules": ["q_proj", "down_proj"], "oft_block_size": 4}
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.OFTConfig(**options, init_weights=False)).eval())
    quiet(lambda: reference.add_adapter("second", peft.OFTConfig(**options, init_weights=False)))
    floors = []
    for name in ("default", "second"):
        reference.set_adapter(name)
        randomise(reference, seed=len(floors))
        floors.append(noise_floor(reference))
    reference.base_model.set_adapter(["default", "second"])
    both_active = logits(reference)
    quiet(lambda: reference.save_pretrained(str(tmp_path)))

    ours = _ours(tiny_llama, tmp_path)
    ours.load_adapter(tmp_path / "second", "second")
    layers = [module for module in ours.modules() if hasattr(module, "oft_R")]
    for layer in layers:
        layer.set_adapter(["default", "second"])
    assert_same(logits(ours), both_active, max(floors))

    ours.merge_adapter(["default", "second"])
    assert_same(logits(ours), both_active, max(floors))
    order = ["default", "second"] if Version(peft.__version__) >= Version("0.22") else ["second", "default"]
    quiet(lambda: reference.merge_adapter(order))
    expected = {k: v for k, v in reference.state_dict().items() if ".base_layer." in k}
    got = ours.state_dict()
    assert len(expected) == len(layers) == 4
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key}: merged weight differs from peft's merged {order}"
