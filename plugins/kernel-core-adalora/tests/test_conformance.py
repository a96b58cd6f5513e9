"""The SDK's tuner conformance suite, run against AdaLoRA on Linear and Conv1D, with a rank
pattern that prunes one module's triplets (the per-module config channel) and not another's."""

from __future__ import annotations

from types import ModuleType

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_adalora import plugin
from kernel_core_adalora.config import AdaLoraConfig
from kernel_core_adalora.tuner import AdaLoraTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

PRUNED = "model.layers.0.mlp.down_proj"
FULL = "model.layers.0.self_attn.k_proj"


class TestAdaLoraConformance(TunerConformance):
    # PEFT's AdaLoRA wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = (PRUNED, FULL)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return nn.Embedding(10, 16)

    @pytest.fixture
    def tuner_config(self) -> AdaLoraConfig:
        # Random triplets, so that a new adapter is not the identity; lora_alpha=1 keeps peft's
        # randn triplets (no small-init option) near a trained size, within the suite's merge tolerance.
        return AdaLoraConfig(
            target_modules=["k_proj", "down_proj"], init_r=4, total_step=10, init_lora_weights=False, lora_alpha=1,
            rank_pattern={f"{PRUNED}.lora_E": [True, False, True, False]},
        )


@pytest.mark.parametrize(("module_name", "rank"), [(PRUNED, 2), (FULL, 4)])
def test_the_rank_pattern_sets_each_module_s_rank(module_name: str, rank: int) -> None:
    config = AdaLoraConfig(init_r=4, total_step=10, rank_pattern={f"{PRUNED}.lora_E": [True, False, True, False]})
    assert config.rank == 4  # the adapter's own config names no module
    assert config.for_module(module_name).rank == rank


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("adalora", "ADALORA")
    assert spec.load() is AdaLoraTuner
