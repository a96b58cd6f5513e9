"""The block circular convolution's hand-written backward: the true gradient (checked against
finite differences in float64), keeping only the input and the kernel for the backward pass."""

from __future__ import annotations

import peft.tuners.c3a.utils
import torch

from kernel_core_c3a.layer import block_circular_convolution


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, generator=generator, dtype=torch.float64).requires_grad_()
    kernel = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64).requires_grad_()  # m=2, n=3, b=4
    return x, kernel


def test_the_backward_is_the_true_gradient_of_both_inputs() -> None:
    assert torch.autograd.gradcheck(block_circular_convolution, _inputs())


def test_the_kernel_gradient_is_peft_s_and_the_input_gradient_fixes_peft_s_reversal() -> None:
    """peft 0.21's BlockCircularConvolution: the same kernel gradient, an input gradient whose
    block entries are index-reversed (it fails gradcheck); ours is the true one, as documented."""
    x, kernel = _inputs()
    grad = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = torch.autograd.grad(block_circular_convolution(x, kernel), (x, kernel), grad)
    theirs = torch.autograd.grad(peft.tuners.c3a.utils.BlockCircularConvolution.apply(x, kernel), (x, kernel), grad)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-12, rtol=0)
    assert (ours[0] - theirs[0]).abs().max() > 1e-3


def test_only_the_input_and_the_kernel_are_kept_for_backward() -> None:
    x, kernel = _inputs()
    out = block_circular_convolution(x, kernel)
    assert [t.data_ptr() for t in out.grad_fn.saved_tensors] == [x.data_ptr(), kernel.data_ptr()]
