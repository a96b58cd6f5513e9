"""The SDK's tuner conformance suite, run against RandLoRA on Linear and Conv1D, wrapped on their
own (each layer then draws bases of its own size from the adapter's key)."""

from __future__ import annotations

from types import ModuleType

import pytest
from transformers.pytorch_utils import Conv1D

from kernel_core_randlora import plugin
from kernel_core_randlora.config import RandLoraConfig
from kernel_core_randlora.tuner import RandLoraTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES


class TestRandLoraConformance(TunerConformance):
    # PEFT's RandLoRA wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> RandLoraConfig:
        # init_weights=False: lambda random, so that a new adapter is not the identity; alpha / r 0.1 keeps the
        # update after a training step of lr 0.1 small enough for merge-then-unmerge to restore the base closely.
        return RandLoraConfig(target_modules=["q_proj", "down_proj"], r=3, randlora_alpha=0.3, init_weights=False, projection_prng_key=3)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("randlora", "RANDLORA")
    assert spec.load() is RandLoraTuner
