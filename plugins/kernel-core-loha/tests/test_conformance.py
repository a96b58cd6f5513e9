"""The SDK's tuner conformance suite, run against LoHa on Linear, for a module that takes the
adapter's rank and alpha and one that gets its own from rank_pattern/alpha_pattern."""

from __future__ import annotations

from types import ModuleType

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_loha import plugin
from kernel_core_loha.config import LoHaConfig
from kernel_core_loha.tuner import LoHaTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES, CONV2D_CANDIDATES

PATTERNED = "model.layers.0.mlp.down_proj"
PLAIN = "model.layers.0.self_attn.k_proj"


class TestLoHaConformance(TunerConformance):
    # PEFT's LoHa wraps no Embedding and no transformers Conv1D (can_wrap declines them); a 3x3
    # Conv2d gets the CP form (use_effective_conv2d), a grouped one the flattened form
    candidates = {
        **{k: v for k, v in CANDIDATES.items() if k != "embedding"},
        **CONV2D_CANDIDATES,
    }
    module_names = (PATTERNED, PLAIN)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)

    @pytest.fixture
    def tuner_config(self) -> LoHaConfig:
        # Random factors, so that a new adapter is not the identity.
        return LoHaConfig(
            target_modules=["k_proj", "down_proj"], r=4, alpha=6, rank_pattern={"down_proj": 2},
            alpha_pattern={r"layers\.0\.mlp\.down_proj": 3}, init_weights=False, use_effective_conv2d=True,
        )


def test_patterns_give_each_module_its_rank_and_alpha() -> None:
    config = LoHaConfig(target_modules=["k_proj", "down_proj"], r=4, alpha=6, rank_pattern={"down_proj": 2}, alpha_pattern={"mlp.down_proj": 3})
    assert (config.for_module(PATTERNED).r, config.for_module(PATTERNED).alpha) == (2, 3)
    assert (config.for_module(PLAIN).r, config.for_module(PLAIN).alpha) == (4, 6)
    layer = LoHaTuner().wrap(nn.Linear(16, 8), "default", config.for_module(PATTERNED))
    assert layer.hada_w1_a["default"].shape == (8, 2) and layer.hada_w2_b["default"].shape == (2, 16)


def test_a_new_adapter_is_the_identity() -> None:
    layer = LoHaTuner().wrap(nn.Linear(16, 8), "default", LoHaConfig(target_modules=["x"]))
    assert not layer.delta_weight("default").any()


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("loha", "LOHA")
    assert spec.load() is LoHaTuner


@pytest.mark.parametrize(("kernel", "cores"), [(3, {"hada_t1", "hada_t2"}), (1, set())])
def test_effective_conv2d_keeps_a_cp_core_for_kernels_above_1x1(kernel: int, cores: set[str]) -> None:
    config = LoHaConfig(target_modules=["conv"], r=2, use_effective_conv2d=True, init_weights=False)
    layer = LoHaTuner().wrap(nn.Conv2d(4, 6, kernel), "default", config.for_module("conv"))
    assert {key.split(".")[0] for key in layer.state_dict() if key.startswith("hada_t")} == cores
    assert layer.delta_weight("default").shape == layer.base_layer.weight.shape
