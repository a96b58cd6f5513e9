"""The SDK's tuner conformance suite, run against FourierFT on Linear and Conv1D, with a module
whose ``n_frequency`` comes from ``n_frequency_pattern`` and one with the default."""

from __future__ import annotations

from types import ModuleType

import pytest
from transformers.pytorch_utils import Conv1D

from kernel_core_fourierft import plugin
from kernel_core_fourierft.config import FourierFTConfig
from kernel_core_fourierft.tuner import FourierFTTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

PATTERNED = "model.layers.0.mlp.down_proj"
DEFAULT = "model.layers.0.self_attn.q_proj"


class TestFourierFTConformance(TunerConformance):
    # PEFT's FourierFT wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = (PATTERNED, DEFAULT)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> FourierFTConfig:
        # init_weights=False (PEFT's default): random coefficients, so a new adapter is not the identity.
        return FourierFTConfig(target_modules=["q_proj", "down_proj"], n_frequency=20, n_frequency_pattern={"down_proj": 7}, scaling=10.0)


def test_n_frequency_per_module_follows_the_pattern() -> None:
    config = FourierFTConfig(target_modules=["q_proj", "down_proj"], n_frequency=20, n_frequency_pattern={"down_proj": 7})
    assert config.for_module(PATTERNED).n_frequency == 7 and config.for_module(PATTERNED).module_name == PATTERNED
    assert config.for_module(DEFAULT).n_frequency == 20


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("fourierft", "FOURIERFT")
    assert spec.load() is FourierFTTuner
