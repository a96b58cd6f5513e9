"""BOFT adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny Llama twice; one side makes an adapter with non-default
options and randomised blocks and scales (and biases or saved modules where the case trains
them) and saves it, the other loads it. "Same" is judged against peft's own noise floor: how far
peft's merged model is from its unmerged one on that adapter. (PEFT's BOFT has no Conv1D layer,
so GPT-2 is not a case.)

PEFT builds butterfly factors beyond the first only with its CUDA block-diagonal extension;
without it (this CPU) it silently uses one factor whatever the config says. So that the oracle
runs PEFT's own butterfly code here, the extension is replaced by :class:`BlockDiagonal` (each
factor's blocks put on the diagonal, which is all the kernel computes); one test runs PEFT's
extension-less path as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import peft.tuners.boft.layer
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_boft.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_merges_as_peft, assert_mixed_batch, assert_ours_loads_in_peft,
    assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, logits, noise_floor, peft_load, peft_made,
    quiet, randomise,
)
from kernel_core_sdk.tiny_models import tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {}),
    "block-num": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"], "boft_block_size": 0, "boft_block_num": 4}),
    "butterfly-2-regex": (
        tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj)", "boft_block_size": 2, "boft_n_butterfly_factor": 2}
    ),
    "butterfly-3-block-num": (
        tiny_llama,
        {"target_modules": ["q_proj", "down_proj"], "boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 3},
    ),
    "layers-dropout": (
        tiny_llama,
        {"target_modules": ["q_proj", "up_proj"], "boft_block_size": 8, "layers_to_transform": [0],
         "layers_pattern": "layers", "boft_dropout": 0.2},
    ),
    "all-linear-excluded": (
        tiny_llama, {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"]}
    ),
    "bfloat16-butterfly": (
        lambda: tiny_llama(attention_bias=True).to(torch.bfloat16),
        {"target_modules": ["q_proj", "down_proj"], "boft_block_size": 2, "boft_n_butterfly_factor": 3},
    ),
    "modules-to-save": (tiny_llama, {"target_modules": ["v_proj"], "boft_block_size": 2, "modules_to_save": ["lm_head"]}),
    "bias-boft-only": (
        lambda: tiny_llama(attention_bias=True),
        {"target_modules": ["q_proj", "k_proj"], "boft_block_size": 4, "boft_n_butterfly_factor": 2, "bias": "boft_only"},
    ),
    "bias-all": (
        lambda: tiny_llama(attention_bias=True), {"target_modules": ["v_proj", "up_proj"], "boft_block_size": 16, "bias": "all"}
    ),
}


class BlockDiagonal:
    """Stands in for PEFT's CUDA ``fbd_cuda`` extension: ``(N, D, H, H)`` blocks to ``(N, DH, DH)``."""

    def forward(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]


PEFT_S_EXTENSION = peft.tuners.boft.layer.get_fbd_cuda


@pytest.fixture(autouse=True)
def butterflies_in_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peft.tuners.boft.layer, "get_fbd_cuda", BlockDiagonal)


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    return peft_made(build, peft.BOFTConfig(**fields, init_weights=False), seed, folder)


def _ours(build: Callable[[], PreTrainedModel], folder: Path, **kwargs: Any) -> PeftModel:
    return quiet(lambda: PeftModel.from_pretrained(build(), folder, **kwargs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = quiet(lambda: get_peft_model(build(), get_config("boft", **fields, init_weights=False))).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # only keys peft's BOFTConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    assert_peft_loads_in_ours(reference, build, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and unmerging gives peft's unmerged ones
    (``B^T`` undoes ``B`` only up to rounding: peft's own round trip is the oracle)."""
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


def test_peft_without_its_extension_loads_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PEFT's own CPU path (one butterfly factor, blocks put together by torch.block_diag)."""
    monkeypatch.setattr(peft.tuners.boft.layer, "get_fbd_cuda", PEFT_S_EXTENSION)
    fields = CASES["bias-boft-only"][1] | {"boft_n_butterfly_factor": 1}
    build = CASES["bias-boft-only"][0]
    reference = _peft_made(build, fields, tmp_path / "peft")
    assert_same(logits(_ours(build, tmp_path / "peft")), logits(reference), noise_floor(reference))

    ours = quiet(lambda: get_peft_model(build(), get_config("boft", **fields, init_weights=False))).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path / "ours")
    reference = peft_load(build, tmp_path / "ours")
    assert_same(logits(ours), logits(reference), noise_floor(reference))


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different layouts) and the base, one per row, in one forward:
    each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "boft_block_size": 4},
        "second": {"target_modules": ["k_proj", "up_proj"], "boft_block_size": 2, "boft_n_butterfly_factor": 3},
    }
    references = {}
    for seed, (name, options) in enumerate(fields.items()):
        references[name] = _peft_made(lambda: tiny_llama(attention_bias=True), options, tmp_path / name, seed)
    assert_mixed_batch(lambda: tiny_llama(attention_bias=True), references, tmp_path)


def test_two_adapters_active_and_merged_equal_peft(tmp_path: Path) -> None:
    """With two adapters active on a layer, peft rotates the input by the second, then the first,
    and merging them in order computes the same; ours does both, with peft's merged weights."""
    options = {"target_modules": ["q_proj", "down_proj"], "boft_block_size": 2, "boft_n_butterfly_factor": 2}
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.BOFTConfig(**options, init_weights=False)).eval())
    quiet(lambda: reference.add_adapter("second", peft.BOFTConfig(**options, init_weights=False)))
    for seed, name in enumerate(("default", "second")):
        reference.set_adapter(name)
        randomise(reference, seed=seed)
    reference.base_model.set_adapter(["default", "second"])
    both_active = logits(reference)
    # the floor of what is compared: peft's two active adapters merged against the same two unmerged
    # (one adapter's floor is not it: two rotations round twice; 4.5e-8 against 3.0e-8 on an AMD EPYC)
    floor = noise_floor(reference)
    quiet(lambda: reference.save_pretrained(str(tmp_path)))

    ours = _ours(tiny_llama, tmp_path)
    ours.load_adapter(tmp_path / "second", "second")
    layers = [module for module in ours.modules() if hasattr(module, "boft_R")]
    for layer in layers:
        layer.set_adapter(["default", "second"])
    assert_same(logits(ours), both_active, floor)

    ours.merge_adapter(["default", "second"])
    assert_same(logits(ours), both_active, floor)
    quiet(lambda: reference.merge_adapter(["default", "second"]))
    expected = {k: v for k, v in reference.state_dict().items() if ".base_layer." in k}
    got = ours.state_dict()
    assert len(expected) == len(layers) == 4
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key}: merged weight differs from peft's"


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    expected = as_peft_table(DEFAULT_TARGETS)
    assert expected == TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
