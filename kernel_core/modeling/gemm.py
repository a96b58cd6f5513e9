"""``F.linear`` with the operand order that runs fastest for a serving step's row count.

On the CPU, MKL's float32 GEMM computes a decode-sized batch (a few dozen to ~128 token rows)
faster as ``weight @ x.T``, with the rows padded to a multiple of 16, than as ``x @ weight.T``:
on the 2-core AVX2 development machine, W1 ran 3-6% faster end to end with it (same process,
alternating runs, identical greedy tokens; docs/benchmarks.md). Prefill-sized batches keep
``F.linear``, which is the faster form there (about 1.7x at 2,048 rows). Other devices and
dtypes always take ``F.linear``.

Part of the public model-building surface (:mod:`kernel_core.modeling`, plugin API 1.3): a model
plugin computing its own projections calls this rather than ``F.linear`` to get the same speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Most rows computed in the transposed form; above it ``F.linear`` was as fast or faster.
TRANSPOSED_MAX_ROWS = 128
#: Rows are padded to a multiple of this, the width MKL's kernels run without a remainder.
ROW_ALIGNMENT = 16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` ``[rows, in]``: a contiguous ``[rows, out]`` tensor."""
    rows = x.shape[0]
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or rows > TRANSPOSED_MAX_ROWS:
        return F.linear(x, weight, bias)
    padded = -(-rows // ROW_ALIGNMENT) * ROW_ALIGNMENT
    if padded != rows:  # zero rows, so the discarded columns never hold NaN or denormals
        x = torch.cat((x, x.new_zeros(padded - rows, x.shape[1])))
    out_t = torch.mm(weight, x.t()) if bias is None else torch.addmm(bias[:, None], weight, x.t())
    return out_t[:, :rows].t().contiguous()
