"""The SDK's tuner conformance suite, run against C3A on Linear (it declines Conv1D and
Embedding, as PEFT's C3A does), with a module whose ``block_size`` comes from
``block_size_pattern`` and one with the default."""

from __future__ import annotations

from types import ModuleType

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_c3a import plugin
from kernel_core_c3a.config import C3AConfig
from kernel_core_c3a.tuner import C3ATuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

PATTERNED = "model.layers.0.mlp.down_proj"
DEFAULT = "model.layers.0.self_attn.q_proj"


class TestC3AConformance(TunerConformance):
    candidates = {name: make for name, make in CANDIDATES.items() if name != "embedding"}  # Linear only, as PEFT
    module_names = (PATTERNED, DEFAULT)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> C3AConfig:
        # init_weights "gaussian": random kernels, so that a new adapter is not the identity.
        return C3AConfig(target_modules=["q_proj", "down_proj"], block_size=8, block_size_pattern={"down_proj": 2}, init_weights="gaussian")


def test_block_size_per_module_follows_the_pattern() -> None:
    config = C3AConfig(target_modules=["q_proj", "down_proj"], block_size=8, block_size_pattern={"down_proj": 2})
    assert config.for_module(PATTERNED).block_size == 2 and config.for_module(PATTERNED).module_name == PATTERNED
    assert config.for_module(DEFAULT).block_size == 8


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("c3a", "C3A")
    assert spec.load() is C3ATuner


def test_conv1d_and_embedding_are_declined_as_peft_declines_them() -> None:
    tuner = C3ATuner()
    assert tuner.can_wrap(nn.Linear(16, 8))
    assert not tuner.can_wrap(Conv1D(8, 16)) and not tuner.can_wrap(nn.Embedding(10, 16))

