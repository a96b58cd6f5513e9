"""The SDK's tuner conformance suite, run against LayerNorm tuning on torch's LayerNorm and
Llama's RMSNorm. LayerNorm tuning computes and merges one adapter at a time (as PEFT): the
suite's several-adapters merge case is replaced by that rule."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from kernel_core_ln_tuning import plugin
from kernel_core_ln_tuning.config import LNTuningConfig
from kernel_core_ln_tuning.layer import LNTuningLayer
from kernel_core_ln_tuning.tuner import LNTuningTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import ADAPTER, OTHER, base_state, output, two_trained_adapters


class TestLNTuningConformance(TunerConformance):
    candidates = {
        "layernorm": lambda: nn.LayerNorm(16),
        "rmsnorm": lambda: LlamaRMSNorm(16),
        "linear": lambda: nn.Linear(16, 8),
    }
    module_names = ("model.layers.0.input_layernorm",)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return nn.Dropout(0.1)  # nothing to copy and train

    @pytest.fixture
    def module_input(self, candidate_module: nn.Module) -> torch.Tensor:
        return torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))

    @pytest.fixture
    def tuner_config(self) -> LNTuningConfig:
        return LNTuningConfig(target_modules=["input_layernorm"])

    def test_merge_given_adapters(self, module_config: LNTuningConfig, wrapped: LNTuningLayer, module_input: torch.Tensor) -> None:
        """One named adapter merges (and computes as it alone); two at once are refused, as
        are two active ones in a forward."""
        wrapped.update_layer(OTHER, module_config)
        x = two_trained_adapters(wrapped, module_input)
        base = base_state(wrapped)
        wrapped.set_adapter([OTHER])
        alone = output(wrapped, x)
        wrapped.set_adapter([ADAPTER])
        wrapped.merge([OTHER])
        assert wrapped.merged_adapters == [OTHER]
        assert torch.equal(output(wrapped, x), alone)
        wrapped.merge([ADAPTER])  # merging another swaps the first back out
        assert wrapped.merged_adapters == [ADAPTER]
        wrapped.unmerge()
        assert all(torch.equal(value, base[key]) for key, value in base_state(wrapped).items())
        with pytest.raises(ValueError, match="one adapter at a time"):
            wrapped.merge([ADAPTER, OTHER])
        wrapped.set_adapter([ADAPTER, OTHER])
        with pytest.raises(ValueError, match="one adapter at a time"):
            output(wrapped, x)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("ln_tuning", "LN_TUNING")
    assert spec.load() is LNTuningTuner
