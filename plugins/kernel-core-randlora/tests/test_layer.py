"""The scaled basis's hand-written backward: the true gradient (checked against finite
differences in float64), PEFT's, keeping only its three inputs for the backward pass."""

from __future__ import annotations

import peft.tuners.randlora.layer
import pytest
import torch

from kernel_core_randlora.layer import scaled_basis


def _inputs(bases_in_A: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(3, bases_in_A, 5, generator=generator, dtype=torch.float64)  # r=3, min_dim=5
    lambda_ = torch.randn(3, 4, generator=generator, dtype=torch.float64).requires_grad_()  # 4 bases
    gamma = torch.randn(4, 5, generator=generator, dtype=torch.float64).requires_grad_()
    return A, lambda_, gamma


@pytest.mark.parametrize("bases_in_A", [1, 4], ids=["shared-A", "A-per-basis"])
def test_the_backward_is_the_true_gradient(bases_in_A: int) -> None:
    assert torch.autograd.gradcheck(scaled_basis, _inputs(bases_in_A))


def test_the_gradients_are_peft_s() -> None:
    A, lambda_, gamma = _inputs(1)
    grad = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = torch.autograd.grad(scaled_basis(A, lambda_, gamma), (lambda_, gamma), grad)
    theirs = torch.autograd.grad(peft.tuners.randlora.layer.UniqueBaseGrad.apply(A, lambda_, gamma), (lambda_, gamma), grad)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-12, rtol=0)


def test_only_the_three_inputs_are_kept_for_backward() -> None:
    A, lambda_, gamma = _inputs(1)
    out = scaled_basis(A, lambda_, gamma)
    assert [t.data_ptr() for t in out.grad_fn.saved_tensors] == [A.data_ptr(), lambda_.data_ptr(), gamma.data_ptr()]
