"""``linear`` runs the installed platform GEMM policy; the core's own default is plain ``F.linear``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from kernel_core.contracts.platform import LinearPolicy, Platform
from kernel_core.modeling import linear
from kernel_core.modeling.gemm import install_linear_policy, linear_policy


class Doubling(LinearPolicy):
    """Keeps weights doubled, halving the product: a layout ``F.linear`` alone would get wrong."""

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight / 2, bias)


@pytest.fixture
def default_policy() -> Iterator[None]:
    """The core's default installed for the test, whatever an engine built earlier installed."""
    previous = install_linear_policy(LinearPolicy())
    yield
    install_linear_policy(previous)


@pytest.mark.usefixtures("default_policy")
@pytest.mark.parametrize("shape", [(0, 96), (1, 96), (17, 96), (300, 96), (2, 3, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_default_is_f_linear(shape: tuple[int, ...], dtype: torch.dtype, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(shape[0])
    x = torch.randn(shape, generator=generator).to(dtype)
    weight = torch.randn(80, 96, generator=generator).to(dtype)
    bias = torch.randn(80, generator=generator).to(dtype) if with_bias else None
    assert LinearPolicy().prepare(weight) is weight
    assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))


def test_a_platform_names_the_default_unless_it_overrides() -> None:
    assert type(Platform.linear_policy(None)) is LinearPolicy  # type: ignore[arg-type]


@pytest.mark.usefixtures("default_policy")
def test_linear_runs_the_installed_policy() -> None:
    policy = Doubling()
    x, weight = torch.randn(5, 16), torch.randn(4, 16)
    previous = install_linear_policy(policy)
    try:
        assert linear_policy() is policy
        torch.testing.assert_close(linear(x, policy.prepare(weight)), F.linear(x, weight))
    finally:
        assert install_linear_policy(previous) is policy
    assert type(linear_policy()) is LinearPolicy
