"""The SDK's tuner conformance suite, run against HRA on Linear and Conv2d layers, once with
separate reflections and once Gram-Schmidt orthonormalised; and the reflections' algebra."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_hra import plugin
from kernel_core_hra.config import HRAConfig
from kernel_core_hra.layer import reflections
from kernel_core_hra.tuner import HRATuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES, CONV2D_CANDIDATES

#: Linear and an ungrouped Conv2d: what HRA wraps (PEFT's HRA has no Embedding layer and refuses a
#: grouped convolution: test_grouped_convolutions_are_declined_rectangular_ones_sized_by_both_sides checks the decline).
CANDIDATES_HRA = {k: v for k, v in {**CANDIDATES, **CONV2D_CANDIDATES}.items() if k not in ("embedding", "conv2d-1x1-grouped")}


class TestHRAConformance(TunerConformance):
    candidates = CANDIDATES_HRA

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)  # PEFT's HRA has no Conv1D layer either

    @pytest.fixture
    def tuner_config(self) -> HRAConfig:
        return HRAConfig(target_modules=["up_proj"], r=3, init_weights=False)


class TestHRAGramSchmidtConformance(TestHRAConformance):
    @pytest.fixture
    def tuner_config(self) -> HRAConfig:
        return HRAConfig(target_modules=["up_proj"], r=4, apply_GS=True, init_weights=False)


@pytest.mark.parametrize("gram_schmidt", [False, True])
def test_reflections_are_orthogonal_and_reverse_inverts(gram_schmidt: bool) -> None:
    u = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = reflections(u, gram_schmidt=gram_schmidt)
    torch.testing.assert_close(h @ h.t(), torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(h @ reflections(u, gram_schmidt=gram_schmidt, reverse=True), torch.eye(12, dtype=torch.float64))


def test_a_new_adapter_with_an_even_rank_is_the_identity() -> None:
    layer = HRATuner().wrap(nn.Linear(16, 8), "default", HRAConfig(target_modules=["x"], r=4))
    torch.testing.assert_close(layer.reflection("default"), torch.eye(16))


def test_an_odd_rank_cannot_start_as_the_identity() -> None:
    with pytest.warns(UserWarning, match="r=3 is odd"):
        HRATuner().wrap(nn.Linear(16, 8), "default", HRAConfig(target_modules=["x"], r=3))


def test_grouped_convolutions_are_declined_rectangular_ones_sized_by_both_sides() -> None:
    """As PEFT 0.22: a 3x1 kernel's vectors are in * 3 * 1 long (PEFT before 0.22: in * 3 * 3)."""
    assert not HRATuner().can_wrap(nn.Conv2d(4, 6, 1, groups=2))
    layer = HRATuner().wrap(nn.Conv2d(4, 6, (3, 1)), "default", HRAConfig(target_modules=["x"], r=2))
    assert layer.hra_u["default"].shape == (4 * 3 * 1, 2)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("hra", "HRA")
    assert spec.load() is HRATuner
