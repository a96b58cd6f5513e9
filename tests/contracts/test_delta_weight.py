"""DeltaWeightLayer: a method that only says how its ΔW is built gets the forward, merge,
unmerge, adapter bookkeeping and mixed batches of a weight-update tuner layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BASE_ADAPTER


class OuterProduct(DeltaWeightLayer):
    """ΔW = u vᵀ, u and v in two containers; while training ΔW is doubled (a stand-in for
    dropout on the update, to see the flag arrive)."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.outer_u = nn.ParameterDict()
        self.outer_v = nn.ParameterDict()

    def update_layer(self, adapter_name: str, config: object = None) -> None:
        self.outer_u[adapter_name] = nn.Parameter(torch.randn(self.out_features, 1))
        self.outer_v[adapter_name] = nn.Parameter(torch.randn(1, self.in_features))

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        delta = self.outer_u[adapter_name] @ self.outer_v[adapter_name]
        return 2 * delta if training else delta


@pytest.fixture
def layer() -> OuterProduct:
    torch.manual_seed(0)
    layer = OuterProduct(nn.Linear(6, 4))
    for name in ("a", "b"):
        layer.update_layer(name)
    layer.set_adapter(["a"])
    return layer.eval()


def test_forward_merge_and_unmerge_follow_delta_weight(layer: OuterProduct) -> None:
    x = torch.randn(3, 6)
    base = layer.base_layer.weight.detach().clone()
    expected = F.linear(x, base + layer.delta_weight("a"), layer.base_layer.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        layer.merge(["a", "b"])
        torch.testing.assert_close(layer.base_layer.weight, base + layer.delta_weight("a") + layer.delta_weight("b"))
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base)
    assert layer.merged_adapters == []


def test_a_training_forward_asks_for_the_training_update(layer: OuterProduct) -> None:
    x = torch.randn(3, 6)
    base = layer.base_layer.weight.detach().clone()
    layer.train()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, base + 2 * layer.delta_weight("a"), layer.base_layer.bias))
        layer.merge()  # merging always folds the plain update
        torch.testing.assert_close(layer.base_layer.weight, base + layer.delta_weight("a"))


def test_adapters_follow_the_containers(layer: OuterProduct) -> None:
    assert layer.adapter_names == ["a", "b"]
    layer.merge(["b"])
    with pytest.raises(ValueError, match="'b' is merged"):
        layer.delete_adapter("b")
    layer.unmerge()
    layer.delete_adapter("a")
    assert layer.adapter_names == ["b"] and layer.active_adapters == []
    assert [key for key in layer.state_dict() if not key.startswith("base_layer")] == ["outer_u.b", "outer_v.b"]


def test_a_mixed_batch_applies_each_row_s_update(layer: OuterProduct) -> None:
    x = torch.randn(3, 2, 6)
    layer.row_adapters = ["b", BASE_ADAPTER, "a"]
    with torch.no_grad():
        mixed = layer(x)
    layer.row_adapters = None
    base = layer.base_layer.weight
    for i, name in enumerate(["b", BASE_ADAPTER, "a"]):
        weight = base if name == BASE_ADAPTER else base + layer.delta_weight(name)
        torch.testing.assert_close(mixed[i], F.linear(x[i], weight, layer.base_layer.bias).detach())


def test_a_conv1d_computes_and_merges_as_the_linear_it_transposes() -> None:
    """GPT-2's Conv1D stores its weight (in, out): the same ΔW, added transposed when merging."""
    torch.manual_seed(0)
    conv = Conv1D(4, 6)  # 6 in, 4 out
    layer = OuterProduct(conv).eval()
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (6, 4, True)
    layer.update_layer("a")
    layer.set_adapter(["a"])
    x = torch.randn(3, 6)
    base = conv.weight.detach().clone()
    expected = F.linear(x, base.T + layer.delta_weight("a"), conv.bias).detach()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        layer.merge()
        torch.testing.assert_close(conv.weight, base + layer.delta_weight("a").T)
        torch.testing.assert_close(layer(x), expected)
        layer.unmerge()
    torch.testing.assert_close(conv.weight, base)


def test_only_linear_conv1d_and_conv2d_layers() -> None:
    with pytest.raises(TypeError, match="wraps nn.Linear, Conv1D or nn.Conv2d, not Conv1d"):
        OuterProduct(nn.Conv1d(2, 2, 1))


class FullKernel(DeltaWeightLayer):
    """ΔW a free tensor in the base weight's shape."""

    def update_layer(self, adapter_name: str, config: object = None) -> None:
        self.full_delta = nn.ParameterDict({adapter_name: nn.Parameter(torch.randn(self.base_layer.weight.shape))})

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        return self.full_delta[adapter_name]


def test_on_a_conv2d_the_update_is_a_kernel_applied_as_the_base_s() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    layer = FullKernel(conv).eval()
    layer.update_layer("a")
    layer.set_adapter(["a"])
    assert (layer.in_features, layer.out_features) == (4, 6)
    x = torch.randn(2, 4, 7, 7)
    base = conv.weight.detach().clone()
    delta = layer.delta_weight("a").detach()
    expected = F.conv2d(x, base + delta, conv.bias, stride=2, padding=1, groups=2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        layer.merge()
        torch.testing.assert_close(conv.weight, base + delta)
        layer.unmerge()
    torch.testing.assert_close(conv.weight, base)


def test_over_a_half_precision_base_updates_are_float32_and_summed_before_rounding() -> None:
    torch.manual_seed(0)
    layer = OuterProduct(nn.Linear(6, 4).to(torch.bfloat16)).eval()
    assert layer.adapter_dtype == torch.float32
    assert OuterProduct(nn.Linear(6, 4).double()).adapter_dtype == torch.float64
    layer.update_layer("a")
    layer.set_adapter(["a"])
    x = torch.randn(3, 6).to(torch.bfloat16)
    base, delta = layer.base_layer.weight.detach().clone(), layer.delta_weight("a").detach()
    with torch.no_grad():
        expected = (layer.base_layer(x).float() + F.linear(x.float(), delta)).to(torch.bfloat16)
        assert torch.equal(layer(x), expected)
        layer.merge()
    assert torch.equal(layer.base_layer.weight, (base.float() + delta).to(torch.bfloat16)), "rounded once, after the sum"
