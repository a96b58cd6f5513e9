"""HRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny model twice; one side makes an adapter with non-default
options and randomised vectors (and biases or saved modules where the case trains them) and
saves it, the other loads it. "Same" is judged against peft's own noise floor: how far peft's
merged model is from its unmerged one on that adapter; merged weights must be peft's bit for bit.
(PEFT's HRA has no Conv1D layer, so GPT-2 is not a case.)

Ours computes ``H`` as peft 0.22 does, in the compact WY form ``I - V T V^T``. peft before 0.22
multiplied the reflections one by one: the same ``H`` in exact arithmetic, rounded otherwise, and
built ``W H`` in every forward, so that its own noise floor is zero and says nothing of a second
form. Against such a peft (:data:`PEFT_22` false) :func:`_floor` adds what the two forms can
differ by: each side's rounding, measured as how far its float32 output (logits, merged or
round-tripped weights) is from the same model's in float64, where both forms agree to 1e-16. A
different computation is off by far more (a transposed ``T``: 1e-3 against floors near 1e-7).
Our own rounding counts in that floor; that our arithmetic is peft's is checked on peft 0.22,
where merged weights are bit-equal and logits within peft's own floor alone.
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
from peft.utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.errors import AdapterLoadError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_hra.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    Output, as_peft_table, assert_changes_output, assert_equal_weights, assert_merges_as_peft, assert_mixed_batch,
    assert_ours_loads_in_peft, assert_peft_loads_in_ours, assert_peft_reads_config, assert_same, flat, logits, merged_weights,
    noise_floor, peft_floor, peft_load, peft_made, peft_merged, quiet, randomise,
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


#: peft 0.22 computes HRA's ``H`` in the compact WY form, as ours does (bit-equal merged weights),
#: and sizes a Conv2d's vectors from both kernel sides (before: ``kernel_size[0]`` squared).
PEFT_22 = Version(peft.__version__) >= Version("0.22")


def _rounding(model: torch.nn.Module, output: Output) -> float:
    """How far ``model``'s ``output`` is from that of a float64 copy: its arithmetic's own rounding."""
    exact = output(quiet(lambda: copy.deepcopy(model).double()))
    return (output(model).double() - exact).abs().max().item()


def _forms_rounding(reference: Any, ours: torch.nn.Module, output: Output) -> float:
    """What peft's ``output`` and ours may differ by for computing ``H`` in two forms: both
    sides' rounding before peft 0.22 (the module docstring), nothing from 0.22 on."""
    return 0.0 if PEFT_22 else _rounding(reference, output) + _rounding(ours, output)


def _floor(reference: Any, ours: torch.nn.Module, output: Output = logits) -> float:
    """peft's own noise floor, and at least the two forms' rounding: the :data:`Floor` of these tests."""
    return max(peft_floor(reference, ours, output), _forms_rounding(reference, ours, output))


def _peft_made(build: Callable[[], torch.nn.Module], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    return peft_made(build, peft.HRAConfig(**fields, init_weights=False), seed, folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("hra", **fields, init_weights=False)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path, _floor)
    assert_peft_reads_config(tmp_path)  # only keys peft's HRAConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_changes_output(logits(reference), logits(build()))
    ours = assert_peft_loads_in_ours(reference, build, tmp_path, _floor)
    assert {p.dtype for n, p in ours.named_parameters() if ".hra_u." in n} == {torch.float32}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and unmerging gives peft's unmerged ones
    (``H^T`` undoes ``H`` only up to rounding: peft's own round trip is the oracle)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path, _floor)
    expected = _round_trip(reference)
    restored = {key: value for key, value in ours.state_dict().items() if key in expected}
    fresh = quiet(lambda: PeftModel.from_pretrained(build(), tmp_path))
    assert expected
    assert_equal_weights(restored, expected, _forms_rounding(reference, fresh, lambda model: flat(_round_trip(model))))


def _round_trip(model: torch.nn.Module, adapters: list[str] | None = None, unmerge: bool = True) -> dict[str, torch.Tensor]:
    """The wrapped layers' weights of a copy of ``model`` (peft's or ours) with ``adapters`` (None:
    the active ones) merged, then unmerged if ``unmerge``."""
    copied = quiet(lambda: copy.deepcopy(model))
    quiet(lambda: copied.merge_adapter(adapters))
    if unmerge:
        quiet(copied.unmerge_adapter)
    return {key: value for key, value in copied.state_dict().items() if ".base_layer." in key}


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (one Gram-Schmidt) and the base, one per row, in one forward:
    each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "r": 4},
        "second": {"target_modules": ["k_proj", "up_proj"], "r": 3, "apply_GS": True},
    }
    build = lambda: tiny_llama(attention_bias=True)  # noqa: E731
    references = {name: _peft_made(build, options, tmp_path / name, seed) for seed, (name, options) in enumerate(fields.items())}
    alone = {name: quiet(lambda name=name: PeftModel.from_pretrained(build(), tmp_path / name)) for name in fields}
    assert_mixed_batch(build, references, tmp_path, max(_floor(references[name], alone[name]) for name in fields))


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
    floor = max(*floors, _forms_rounding(reference, ours, logits))
    assert_same(logits(ours), both_active, floor)

    both = ["default", "second"]
    weights_floor = _forms_rounding(reference, ours, lambda model: flat(_round_trip(model, both, unmerge=False)))
    ours.merge_adapter(both)
    quiet(lambda: reference.merge_adapter(both))
    assert_same(logits(ours), logits(reference), floor)
    expected = {k: v for k, v in reference.state_dict().items() if ".base_layer." in k}
    assert len(expected) == len(layers) == 4
    assert_equal_weights({key: value for key, value in ours.state_dict().items() if key in expected}, expected, weights_floor)


def test_default_targets_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING


class RectangularConvNet(TinyConvNet):
    """:class:`TinyConvNet` with a 3x1 first kernel: HRA's vectors there are ``in * 3 * 1`` long."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.conv1 = torch.nn.Conv2d(4, 8, (3, 1), padding=(1, 0))


CONV_CASES: dict[str, dict[str, Any]] = {
    "reflections": {"target_modules": ["conv1", "conv3", "head"], "r": 4},
    "gram-schmidt": {"target_modules": r"conv[13]|head", "r": 3, "apply_GS": True},
}


def _conv_out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(images().to(next(model.parameters()).dtype))


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_both_ways_and_merged(case: str, tmp_path: Path) -> None:
    """Conv2d targets (3x3 and 1x1; PEFT refuses grouped ones): files both ways with peft's
    outputs, merged weights equal to peft's."""
    _assert_conv2d_both_ways_and_merged(TinyConvNet, CONV_CASES[case], tmp_path)


def test_a_rectangular_kernel_is_sized_from_both_sides(tmp_path: Path) -> None:
    """A 3x1 kernel's vectors are ``in * 3 * 1`` long, as peft 0.22 makes them, and move both
    ways. peft before 0.22 made them ``in * 3 * 3`` long, which its own forward cannot use: such
    a file is refused, naming the tensor."""
    fields = {"target_modules": ["conv1", "conv3"], "r": 4}
    if PEFT_22:
        _assert_conv2d_both_ways_and_merged(RectangularConvNet, fields, tmp_path)
        return
    _peft_made(RectangularConvNet, fields, tmp_path)
    with pytest.raises(AdapterLoadError, match=r"conv1\.hra_u: file \(36, 4\) vs model \(12, 4\)"):
        PeftModel.from_pretrained(RectangularConvNet(), tmp_path)


def _assert_conv2d_both_ways_and_merged(build: Callable[[], torch.nn.Module], fields: dict[str, Any], folder: Path) -> None:
    reference = _peft_made(build, fields, folder / "peft")
    ours = PeftModel.from_pretrained(build(), folder / "peft")
    assert_changes_output(_conv_out(reference), _conv_out(build()))
    assert_same(_conv_out(ours), _conv_out(reference), _floor(reference, ours, _conv_out))
    weights_floor = _floor(reference, ours, merged_weights)
    assert_equal_weights(ours.merge_and_unload().state_dict(), peft_merged(reference).state_dict(), weights_floor)

    ours = get_peft_model(build(), get_config("hra", **fields, init_weights=False)).eval()
    randomise(ours)
    ours.save_pretrained(folder / "ours")
    reference = peft_load(build, folder / "ours")
    assert_same(_conv_out(ours), _conv_out(reference), _floor(reference, ours, _conv_out))
