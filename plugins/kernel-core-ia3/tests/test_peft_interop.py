"""IA3 adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny model twice; one side makes an adapter with non-default
options and random vectors and saves it, the other loads it. "Same" is judged against peft's
own noise floor: how far peft's merged model is from peft's unmerged one on that adapter (the
two orders of the same float32 arithmetic). Ours must be no farther from peft than that.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)
from transformers import PreTrainedModel

from kernel_core.peft import BASE_ADAPTER, PeftModel, get_config, get_peft_model
from kernel_core_ia3.config import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama, token_ids

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {}),
    "feedforward-subset": (
        tiny_llama,
        {"target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"], "feedforward_modules": ["up_proj"]},
    ),
    "regex": (tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj|down_proj)", "feedforward_modules": r".*\.mlp\..*"}),
    "all-linear-excluded": (
        tiny_llama,
        {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"],
         "feedforward_modules": ["down_proj", "gate_proj"]},
    ),
    "modules-to-save": (
        tiny_llama, {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": [], "modules_to_save": ["lm_head"]}
    ),
    "attention-bias": (
        lambda: tiny_llama(attention_bias=True),
        {"target_modules": ["q_proj", "k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    ),
    "conv1d": (tiny_gpt2, {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"], "fan_in_fan_out": True}),
    "conv1d-defaults": (tiny_gpt2, {}),
}


def _randomise(model: torch.nn.Module, seed: int = 3) -> None:
    """Move every trainable tensor off its init, so that the adapter (and any saved copy) matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def _logits(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids(), **kwargs).logits


def _quiet(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that unmerging IA3 is inexact, and about its defaults
        return call()


def _peft_load(build: Callable[[], PreTrainedModel], folder: Path) -> peft.PeftModel:
    return _quiet(lambda: peft.PeftModel.from_pretrained(build(), str(folder)).eval())


def peft_merged(reference: peft.PeftModel) -> PreTrainedModel:
    """A copy of ``reference`` with its adapter merged by peft (``reference`` is left as it is)."""
    return _quiet(lambda: copy.deepcopy(reference).merge_and_unload())


def noise_floor(reference: peft.PeftModel) -> float:
    """How far peft's merged logits are from its unmerged ones, on the same adapter."""
    return (_logits(peft_merged(reference)) - _logits(reference)).abs().max().item()


def assert_same(ours: torch.Tensor, reference: torch.Tensor, floor: float) -> None:
    difference = (ours - reference).abs().max().item()
    assert difference <= floor, f"ours differs from peft by {difference:.3g}, more than peft's own noise floor {floor:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("ia3", **fields)).eval()
    _randomise(ours)
    ours.save_pretrained(tmp_path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our adapter_config.json holds only keys peft's IA3Config has
        peft.PeftConfig.from_pretrained(str(tmp_path))
    reference = _peft_load(build, tmp_path)

    assert (_logits(ours) - _logits(build())).abs().max() > 1e-3, "the adapter must change the output"
    assert_same(_logits(ours), _logits(reference), noise_floor(reference))


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _quiet(lambda: peft.get_peft_model(build(), peft.IA3Config(**fields, init_ia3_weights=False)).eval())
    _randomise(reference)
    _quiet(lambda: reference.save_pretrained(str(tmp_path)))

    ours = PeftModel.from_pretrained(build(), tmp_path)

    assert_same(_logits(ours), _logits(reference), noise_floor(reference))
    assert not any(p.requires_grad for p in ours.parameters()), "loaded for inference: nothing trains"
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(ours.peft_config["default"].feedforward_modules) == sorted(saved["feedforward_modules"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = _quiet(lambda: peft.get_peft_model(build(), peft.IA3Config(**fields, init_ia3_weights=False)).eval())
    _randomise(reference)
    _quiet(lambda: reference.save_pretrained(str(tmp_path)))
    ours = PeftModel.from_pretrained(build(), tmp_path)

    unmerged = _logits(ours)
    ours.merge_adapter()
    merged_logits = _logits(ours)
    ours.unmerge_adapter()
    base = build().state_dict()
    for key, value in ours.unload().state_dict().items():
        torch.testing.assert_close(value, base[key], rtol=1e-6, atol=0, msg=lambda m, key=key: f"{key} after unmerge: {m}")

    ours = PeftModel.from_pretrained(build(), tmp_path)
    merged = ours.merge_and_unload().state_dict()
    expected = peft_merged(reference).state_dict()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(merged[key], value), f"{key}: merged weight differs from peft's"
    assert_same(merged_logits, unmerged, noise_floor(reference))


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (one scaling feed-forward inputs) and the base, one per row, in one
    forward: each row is what peft gives with that adapter alone."""
    fields = {"target_modules": ["k_proj", "up_proj", "down_proj"], "feedforward_modules": ["up_proj", "down_proj"]}
    references, floors = {}, []
    for seed, name in enumerate(("first", "second")):
        reference = _quiet(lambda: peft.get_peft_model(tiny_llama(), peft.IA3Config(**fields, init_ia3_weights=False)).eval())
        _randomise(reference, seed)
        _quiet(lambda reference=reference, name=name: reference.save_pretrained(str(tmp_path / name)))
        references[name] = _logits(reference)
        floors.append(noise_floor(reference))
    references[BASE_ADAPTER] = _logits(tiny_llama())

    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "first", adapter_name="first")
    ours.load_adapter(tmp_path / "second", "second")
    rows = ["second", BASE_ADAPTER, "first"]
    mixed = _logits(ours, adapter_names=rows)
    for i, name in enumerate(rows):
        assert_same(mixed[i], references[name][i], max(floors))
    assert (references["first"] - references["second"]).abs().max() > 1e-3, "the two adapters must differ"


def test_weighted_combination_equals_peft(tmp_path: Path) -> None:
    """add_weighted_adapter of two adapters with different targets and feed-forward modules
    gives peft's combined vectors and logits."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        "second": {"target_modules": ["v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    }
    reference = _quiet(lambda: peft.get_peft_model(tiny_llama(), peft.IA3Config(**fields["first"], init_ia3_weights=False), "first"))
    _quiet(lambda: reference.add_adapter("second", peft.IA3Config(**fields["second"], init_ia3_weights=False)))
    reference.eval()  # init_ia3_weights=False: both adapters' vectors are random
    _quiet(lambda: reference.save_pretrained(str(tmp_path)))
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "first", adapter_name="first")
    ours.load_adapter(tmp_path / "second", "second")

    for model in (reference, ours):
        _quiet(lambda model=model: model.add_weighted_adapter(["first", "second"], [0.7, -0.4], "both"))
        model.set_adapter("both")
    assert sorted(ours.peft_config["both"].target_modules) == sorted(reference.peft_config["both"].target_modules)
    expected = {k: v for k, v in reference.state_dict().items() if ".ia3_l.both" in k}
    got = {k: v for k, v in ours.state_dict().items() if ".ia3_l.both" in k}
    assert got.keys() == expected.keys() and len(got) == 6
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert_same(_logits(ours), _logits(reference), noise_floor(reference))


def test_default_tables_are_peft_s() -> None:
    """target_modules=None and feedforward_modules=None mean what they mean in peft, for every model type."""
    assert {key: list(value) for key, value in DEFAULT_TARGETS.items()} == TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
    assert {key: list(value) for key, value in DEFAULT_FEEDFORWARD.items()} == TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
