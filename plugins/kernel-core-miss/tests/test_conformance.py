"""The SDK's tuner conformance suite, run against MiSS on Linear layers in each of PEFT's
variants (balance with a remainder slice and dropout, mini, bat); and the update as a weight."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_miss import plugin
from kernel_core_miss.config import MissConfig
from kernel_core_miss.tuner import MissTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

LINEARS = {k: v for k, v in CANDIDATES.items() if k != "embedding"}  # PEFT's MiSS adapts Linear layers only


class TestMissConformance(TunerConformance):
    candidates = LINEARS

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)  # PEFT's MiSS has no Conv1D layer either

    @pytest.fixture
    def tuner_config(self) -> MissConfig:
        # r=5 does not divide in_features=16: the last slice is one wide
        return MissConfig(target_modules=["up_proj"], r=5, miss_dropout=0.3, init_weights=False)


class TestMissMiniConformance(TestMissConformance):
    @pytest.fixture
    def tuner_config(self) -> MissConfig:
        return MissConfig(target_modules=["up_proj"], r=4, mini_r=2, init_weights="mini")


class TestMissBatConformance(TestMissConformance):
    @pytest.fixture
    def tuner_config(self) -> MissConfig:
        return MissConfig(target_modules=["up_proj"], r=4, init_weights="bat")


@pytest.mark.parametrize(
    "config",
    [MissConfig(target_modules=["x"], r=3, init_weights=False), MissConfig(target_modules=["x"], r=4, mini_r=4, init_weights="mini"),
     MissConfig(target_modules=["x"], r=4, init_weights="bat")],
    ids=["balance", "mini", "bat"],
)
def test_the_update_is_its_weight_delta(config: MissConfig) -> None:
    """The forward (slice sums; bat's changed weight) computes what ``W + ΔW`` does."""
    layer = MissTuner().wrap(nn.Linear(16, 8), "default", config).double()
    with torch.no_grad():
        layer.miss_block["default"].normal_()
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = nn.functional.linear(x, layer.base_layer.weight + layer.delta_weight("default"), layer.base_layer.bias)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"r": 17}, "r=17 must be at most in_features"),
     ({"r": 3, "init_weights": "bat"}, "init_weights='bat' needs r=3 to divide both in_features and out_features"),
     ({"r": 4, "mini_r": 3, "init_weights": "mini"}, "init_weights='mini' needs mini_r=3 to divide out_features")],
)
def test_layouts_peft_refuses_are_refused_naming_the_module(fields: dict[str, object], message: str) -> None:
    config = MissConfig(target_modules=["up_proj"], **fields).for_module("mlp.up_proj")
    with pytest.raises(ValueError, match=rf"MiSS on mlp\.up_proj \(in_features=16, out_features=8\): {message}"):
        MissTuner().wrap(nn.Linear(16, 8), "default", config)


def test_a_new_adapter_is_the_identity() -> None:
    for variant in (True, "mini", "bat"):
        layer = MissTuner().wrap(nn.Linear(16, 8), "default", MissConfig(target_modules=["x"], r=4, init_weights=variant))
        assert not layer.delta_weight("default").any()


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("miss", "MISS")
    assert spec.load() is MissTuner
