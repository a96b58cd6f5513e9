"""The SDK's tuner conformance suite, run against SHiRA on Linear (it declines Conv1D and
Embedding, as PEFT's SHiRA does)."""

from __future__ import annotations

from types import ModuleType

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES
from kernel_core_shira import plugin
from kernel_core_shira.config import ShiraConfig
from kernel_core_shira.tuner import ShiraTuner


class TestShiraConformance(TunerConformance):
    candidates = {name: make for name, make in CANDIDATES.items() if name != "embedding"}  # Linear only, as PEFT
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


def test_conv1d_and_embedding_are_declined_as_peft_declines_them() -> None:
    tuner = ShiraTuner()
    assert tuner.can_wrap(nn.Linear(16, 8))
    assert not tuner.can_wrap(Conv1D(8, 16)) and not tuner.can_wrap(nn.Embedding(10, 16))

