"""The Hadamard product's hand-written backward: the true gradient (finite differences in float64),
bit-equal to autograd's in float32, keeping only the four factors for the backward pass."""

from __future__ import annotations

import torch

from kernel_core_loha.layer import _HadamardOfProducts

SHAPES = ((6, 3), (3, 5), (6, 3), (3, 5))


def _factors(dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_() for shape in SHAPES]


def test_the_backward_is_the_true_gradient() -> None:
    scale = torch.tensor(0.7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *factors: _HadamardOfProducts.apply(*factors, scale), _factors(torch.float64))


def test_gradients_are_autograd_s_bit_for_bit_and_only_the_factors_are_kept() -> None:
    factors, scale = _factors(torch.float32), torch.tensor(0.7)
    grad = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    delta = _HadamardOfProducts.apply(*factors, scale)
    assert [t.data_ptr() for t in delta.grad_fn.saved_tensors][:4] == [f.data_ptr() for f in factors]
    ours = torch.autograd.grad(delta, factors, grad)
    a1, b1, a2, b2 = factors
    expected = torch.autograd.grad((a1 @ b1) * (a2 @ b2) * scale, factors, grad)
    assert all(torch.equal(x, y) for x, y in zip(ours, expected))
