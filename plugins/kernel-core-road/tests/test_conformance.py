"""The SDK's tuner conformance suite, run against RoAd on Linear layers in each variant; and the
rotation as a matrix."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_road import plugin
from kernel_core_road.config import RoadConfig
from kernel_core_road.layer import rotate, rotation_matrix
from kernel_core_road.tuner import RoadTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

LINEARS = {k: v for k, v in CANDIDATES.items() if k != "embedding"}  # PEFT's RoAd adapts Linear layers only


class TestRoadConformance(TunerConformance):
    candidates = LINEARS

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)  # PEFT's RoAd has no Conv1D layer either

    @pytest.fixture
    def tuner_config(self) -> RoadConfig:
        return RoadConfig(target_modules=["up_proj"], group_size=4, init_weights=False)


class TestRoad2Conformance(TestRoadConformance):
    @pytest.fixture
    def tuner_config(self) -> RoadConfig:
        return RoadConfig(target_modules=["up_proj"], variant="road_2", group_size=8, init_weights=False)


class TestRoad4Conformance(TestRoadConformance):
    @pytest.fixture
    def tuner_config(self) -> RoadConfig:
        return RoadConfig(target_modules=["up_proj"], variant="road_4", group_size=2, init_weights=False)


@pytest.mark.parametrize(("variant", "size"), [("road_1", 6), ("road_2", 12), ("road_4", 24)])
def test_the_matrix_is_the_rotation(variant: str, size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    theta, alpha = torch.randn(size, generator=generator, dtype=torch.float64), torch.randn(size, generator=generator, dtype=torch.float64)
    h = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(h @ rotation_matrix(variant, 4, theta, alpha).t(), rotate(variant, 4, theta, alpha, h))


def test_a_pair_turns_by_its_angle() -> None:
    """road_1, one group of 2: the pair (h0, h1) turns by theta and is scaled by alpha."""
    theta, alpha = torch.tensor([0.3], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    c, s = torch.cos(theta), torch.sin(theta)
    expected = 2.0 * torch.cat([c * 1.0 - s * 5.0, s * 1.0 + c * 5.0])
    torch.testing.assert_close(rotate("road_1", 2, theta, alpha, torch.tensor([[1.0, 5.0]], dtype=torch.float64))[0], expected)


def test_a_group_size_that_does_not_divide_the_outputs_is_named() -> None:
    config = RoadConfig(target_modules=["up_proj"], group_size=6).for_module("mlp.up_proj")
    with pytest.raises(ValueError, match=r"RoAd on mlp\.up_proj \(out_features=8\): group_size=6 does not divide out_features"):
        RoadTuner().wrap(nn.Linear(16, 8), "default", config)


def test_a_new_adapter_is_the_identity() -> None:
    layer = RoadTuner().wrap(nn.Linear(16, 8), "default", RoadConfig(target_modules=["x"], variant="road_4", group_size=4))
    assert torch.equal(layer.rotation("default"), torch.eye(8))


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("road", "ROAD")
    assert spec.load() is RoadTuner
