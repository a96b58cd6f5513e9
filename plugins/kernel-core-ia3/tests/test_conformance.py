"""The SDK's tuner conformance suite, run against IA3 on Linear and Conv1D, each wrapped both as
a feed-forward module (input scaled) and as an attention projection (output scaled)."""

from __future__ import annotations

from types import ModuleType

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_ia3 import plugin
from kernel_core_ia3.config import IA3Config
from kernel_core_ia3.tuner import IA3Tuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

FEEDFORWARD = "model.layers.0.mlp.down_proj"
ATTENTION = "model.layers.0.self_attn.k_proj"


class TestIA3Conformance(TunerConformance):
    # PEFT's IA3 wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = (FEEDFORWARD, ATTENTION)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return nn.Embedding(10, 16)

    @pytest.fixture
    def tuner_config(self) -> IA3Config:
        # Random vectors, so that a new adapter is not the identity.
        return IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False)


@pytest.mark.parametrize(("module_name", "feedforward"), [(FEEDFORWARD, True), (ATTENTION, False)])
def test_the_module_name_decides_what_is_scaled(module_name: str, feedforward: bool) -> None:
    config = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    assert config.is_feedforward is False  # the adapter's own config names no module
    assert config.for_module(module_name).is_feedforward is feedforward
    regex = IA3Config(target_modules=r".*(k|down)_proj", feedforward_modules=r".*\.mlp\..*")
    assert regex.for_module(module_name).is_feedforward is feedforward


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("ia3", "IA3")
    assert spec.load() is IA3Tuner
