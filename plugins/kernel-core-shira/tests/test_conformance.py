"""The SDK's tuner conformance suite, run against SHiRA on Linear (it declines Conv1D and
Embedding, as PEFT's SHiRA does)."""

from __future__ import annotations

from types import ModuleType

import pytest
from transformers.pytorch_utils import Conv1D

from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES
from kernel_core_shira import plugin
from kernel_core_shira.config import ShiraConfig
from kernel_core_shira.tuner import ShiraTuner


class TestShiraConformance(TunerConformance):
    candidates = {**CANDIDATES, "conv1d": lambda: Conv1D(8, 16)}
    module_names = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> ShiraConfig:
        # init_weights=False: random values, so that a new adapter is not the identity.
        return ShiraConfig(target_modules=["q_proj", "down_proj"], r=2, random_seed=4, init_weights=False)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("shira", "SHIRA")
    assert spec.load() is ShiraTuner
