"""The SDK's tuner conformance suite, run against LoKr on Linear, for a module whose factors are
whole (rank 4) and one whose factors are both rank-1 products (rank_pattern, decompose_both)."""

from __future__ import annotations

from types import ModuleType

import pytest
from peft.tuners.lokr.layer import factorization as peft_factorization
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_lokr import plugin
from kernel_core_lokr.config import LoKrConfig
from kernel_core_lokr.factorization import factorization
from kernel_core_lokr.tuner import LoKrTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES, CONV2D_CANDIDATES

DECOMPOSED = "model.layers.0.mlp.down_proj"
WHOLE = "model.layers.0.self_attn.k_proj"
# alpha / r stays near 1: merging then unmerging an update far larger than the base weight
# leaves float32 rounding in the restored weight that the suite rightly does not tolerate.
CONFIG = {
    "target_modules": ["k_proj", "down_proj"], "r": 4, "alpha": 6, "decompose_both": True,
    "rank_pattern": {"down_proj": 1}, "alpha_pattern": {"down_proj": 1.5},
}


class TestLoKrConformance(TunerConformance):
    # PEFT's LoKr wraps no Embedding and no transformers Conv1D (can_wrap declines them); a 3x3
    # Conv2d gets a CP W2 at rank 1 (use_effective_conv2d), a grouped 1x1 one a flattened W2
    candidates = {
        **{k: v for k, v in CANDIDATES.items() if k != "embedding"},
        **CONV2D_CANDIDATES,
    }
    module_names = (DECOMPOSED, WHOLE)

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)

    @pytest.fixture
    def tuner_config(self) -> LoKrConfig:
        # Random factors, so that a new adapter is not the identity.
        return LoKrConfig(**CONFIG, init_weights=False, use_effective_conv2d=True)


@pytest.mark.parametrize(("module_name", "containers"), [(DECOMPOSED, {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}), (WHOLE, {"lokr_w1", "lokr_w2"})])
def test_the_rank_decides_whether_a_factor_is_a_product(module_name: str, containers: set[str]) -> None:
    layer = LoKrTuner().wrap(nn.Linear(16, 8), "default", LoKrConfig(**CONFIG).for_module(module_name))
    assert {key.split(".")[0] for key in layer.state_dict() if key.startswith("lokr_")} == containers
    assert layer.delta_weight("default").shape == (8, 16)


@pytest.mark.parametrize("init", [True, "lycoris"])
@pytest.mark.parametrize("module_name", [DECOMPOSED, WHOLE])
def test_a_new_adapter_is_the_identity(init: bool | str, module_name: str) -> None:
    layer = LoKrTuner().wrap(nn.Linear(16, 8), "default", LoKrConfig(**CONFIG, init_weights=init).for_module(module_name))
    assert not layer.delta_weight("default").any()
    assert LoKrTuner().wrap(nn.Linear(16, 8), "x", LoKrConfig(**CONFIG, init_weights=False).for_module(module_name)).delta_weight("x").any()


@pytest.mark.parametrize(("kernel", "rank", "containers"), [
    (3, 1, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}), (1, 1, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}), (3, 4, {"lokr_w1", "lokr_w2"}),
])
def test_effective_conv2d_keeps_a_cp_core_for_a_low_rank_w2(kernel: int, rank: int, containers: set[str]) -> None:
    config = LoKrConfig(target_modules=["conv"], r=rank, use_effective_conv2d=True, init_weights=False)
    layer = LoKrTuner().wrap(nn.Conv2d(4, 6, kernel), "default", config.for_module("conv"))
    assert {key.split(".")[0] for key in layer.state_dict() if key.startswith("lokr_")} == containers
    assert layer.delta_weight("default").shape == layer.base_layer.weight.shape


def test_re_initialising_an_adapter_with_another_rank_changes_the_form_of_its_factors() -> None:
    layer = LoKrTuner().wrap(nn.Linear(16, 8), "default", LoKrConfig(**CONFIG).for_module(WHOLE))
    layer.update_layer("default", LoKrConfig(**CONFIG).for_module(DECOMPOSED))
    assert {key.split(".")[0] for key in layer.state_dict() if key.startswith("lokr_")} == {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}
    assert layer.delta_weight("default").shape == (8, 16)


def test_factorization_is_peft_s() -> None:
    for factor in (-1, 1, 2, 3, 4, 5, 8, 16, 100):
        for dimension in range(1, 300):
            assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("lokr", "LOKR")
    assert spec.load() is LoKrTuner
