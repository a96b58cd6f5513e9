"""The step-size-aware ``linear``: the same product as ``F.linear`` in every form it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_core.modeling.gemm import TRANSPOSED_MAX_ROWS, linear


@pytest.mark.parametrize("rows", [0, 1, 15, 16, 62, TRANSPOSED_MAX_ROWS, TRANSPOSED_MAX_ROWS + 1, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_f_linear(rows: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=generator)
    weight = torch.randn(80, 96, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    out = linear(x, weight, bias)
    assert out.shape == (rows, 80) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_padding_rows_never_leak_into_the_output() -> None:
    """Rows are computed independently: a NaN row stays in its own output row."""
    x = torch.randn(5, 32)
    x[2] = float("nan")
    out = linear(x, torch.randn(8, 32))
    assert out[2].isnan().all() and not out[[0, 1, 3, 4]].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_take_f_linear(dtype: torch.dtype) -> None:
    x, weight = torch.randn(7, 16, dtype=dtype), torch.randn(4, 16, dtype=dtype)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


def test_batched_input_takes_f_linear() -> None:
    x, weight = torch.randn(2, 3, 16), torch.randn(4, 16)
    assert torch.equal(linear(x, weight), F.linear(x, weight))
