"""The SDK's tuner conformance suite, run against VeRA on Linear and Conv1D, wrapped on their own
(each layer then draws projections of its own size from the adapter's key)."""

from __future__ import annotations

from types import ModuleType

import pytest
from transformers.pytorch_utils import Conv1D

from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES
from kernel_core_vera import plugin
from kernel_core_vera.config import VeraConfig
from kernel_core_vera.tuner import VeraTuner


class TestVeraConformance(TunerConformance):
    # PEFT's VeRA wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> VeraConfig:
        # init_weights=False: lambda_b ones and lambda_d random, so that a new adapter is not the identity.
        return VeraConfig(target_modules=["q_proj", "down_proj"], r=4, init_weights=False, projection_prng_key=3)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("vera", "VERA")
    assert spec.load() is VeraTuner
