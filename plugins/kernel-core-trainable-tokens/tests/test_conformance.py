"""The SDK's tuner conformance suite, run against trainable tokens on an Embedding and on Linear
heads (rows of the weight are output tokens there), wrapped on their own."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_sdk.conformance import TunerConformance
from kernel_core_trainable_tokens import plugin
from kernel_core_trainable_tokens.config import TrainableTokensConfig
from kernel_core_trainable_tokens.tuner import TrainableTokensTuner


class TestTrainableTokensConformance(TunerConformance):
    module_names = ("model.embed_tokens",)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> TrainableTokensConfig:
        # rows within the smallest candidate (a Linear with 8 outputs); random, so not the identity
        return TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=[1, 4, 6], init_weights=False)

    @pytest.fixture
    def other_config(self, module_config: TrainableTokensConfig) -> TrainableTokensConfig:
        # two adapters acting at once need disjoint rows, as in PEFT
        return module_config.model_copy(update={"token_indices": [0, 3, 7]})


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("trainable_tokens", "TRAINABLE_TOKENS")
    assert spec.load() is TrainableTokensTuner
