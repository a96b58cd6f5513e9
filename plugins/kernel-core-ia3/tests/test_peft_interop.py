"""IA3 adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny model twice; one side makes an adapter with non-default
options and random vectors and saves it, the other loads it. "Same" is judged against peft's
own noise floor: how far peft's merged model is from peft's unmerged one on that adapter (the
two orders of the same float32 arithmetic). Ours must be no farther from peft than that.
"""

from __future__ import annotations

import json
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

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_ia3.config import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    assert_peft_reads_config,
    assert_same,
    logits,
    noise_floor,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama

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


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("ia3", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # our adapter_config.json holds only keys peft's IA3Config has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = peft_made(build, peft.IA3Config(**fields, init_ia3_weights=False), folder=tmp_path)

    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(ours.peft_config["default"].feedforward_modules) == sorted(saved["feedforward_modules"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = peft_made(build, peft.IA3Config(**fields, init_ia3_weights=False), folder=tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    base = peft_unloaded(reference).state_dict()
    for key, value in ours.unload().state_dict().items():
        torch.testing.assert_close(value, base[key], rtol=1e-6, atol=0, msg=lambda m, key=key: f"{key} after unmerge: {m}")


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (one scaling feed-forward inputs) and the base, one per row, in one
    forward: each row is what peft gives with that adapter alone."""
    fields = {"target_modules": ["k_proj", "up_proj", "down_proj"], "feedforward_modules": ["up_proj", "down_proj"]}
    references = {}
    for seed, name in enumerate(("first", "second")):
        references[name] = peft_made(tiny_llama, peft.IA3Config(**fields, init_ia3_weights=False), seed, folder=tmp_path / name)
    assert_mixed_batch(tiny_llama, references, tmp_path)


def test_weighted_combination_equals_peft(tmp_path: Path) -> None:
    """add_weighted_adapter of two adapters with different targets and feed-forward modules
    gives peft's combined vectors and logits."""
    fields = {
        "first": {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        "second": {"target_modules": ["v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    }
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.IA3Config(**fields["first"], init_ia3_weights=False), "first"))
    quiet(lambda: reference.add_adapter("second", peft.IA3Config(**fields["second"], init_ia3_weights=False)))
    reference.eval()  # init_ia3_weights=False: both adapters' vectors are random
    quiet(lambda: reference.save_pretrained(str(tmp_path)))
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "first", adapter_name="first")
    ours.load_adapter(tmp_path / "second", "second")

    for model in (reference, ours):
        quiet(lambda model=model: model.add_weighted_adapter(["first", "second"], [0.7, -0.4], "both"))
        model.set_adapter("both")
    assert sorted(ours.peft_config["both"].target_modules) == sorted(reference.peft_config["both"].target_modules)
    expected = {k: v for k, v in reference.state_dict().items() if ".ia3_l.both" in k}
    got = {k: v for k, v in ours.state_dict().items() if ".ia3_l.both" in k}
    assert got.keys() == expected.keys() and len(got) == 6
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert_same(logits(ours), logits(reference), noise_floor(reference))


def test_default_tables_are_peft_s() -> None:
    """target_modules=None and feedforward_modules=None mean what they mean in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
    assert as_peft_table(DEFAULT_FEEDFORWARD) == TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
