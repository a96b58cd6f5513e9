"""The CPU's GEMM policy: oneDNN's linear on weights reordered once, at load, into its blocked layout.

torch's ``F.linear`` takes MKL's sgemm for float32 on the CPU and repacks the weight on every call;
oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``) on a weight reordered by
``torch.ops.mkldnn._reorder_linear_weight`` skips that. Both are private ops of torch's CPU builds
with oneDNN (the ones ``kernel-core-moe-torch`` packs experts with), used only where torch has them.
Measured on a 2-core AMD EPYC (Zen 5: avx512f, avx512_bf16, no AMX), one thread, SmolLM2-135M's
projections (576-1536 wide, lm_head 49152 x 576), against ``F.linear`` (docs/benchmarks.md, issue 16):

- float32: 1.8-3.3x faster from 8 to 512 rows, 1.3-2.5x at 2,048; at one row 0.67-2.2x (slower
  only on the two smallest weights, where a one-token step costs microseconds).
- bfloat16: 1.25-4.4x faster at 1-8 rows (decode), 0.99-1.45x from 64 rows.

So both dtypes are packed where oneDNN computes them natively; float16 and other devices keep
``F.linear``. A packed weight replaces the loaded one, so no memory is added.

A weight a model keeps unprepared (a tied ``lm_head``, which is also the embedding table) is not
packed, but a large float32 one still goes to oneDNN's linear, which takes the plain layout too:
``lm_head`` 49152 x 576 at 64 rows ran 11.6 ms there against 36.3 ms through MKL (2.6-3.1x from 1
to 2,048 rows; same machine, two threads), about 5 s of W1's 35 s in float32. Small products stay
with ``F.linear`` (a rank-16 LoRA factor at 64 rows: 12 us against oneDNN's 22 us); in bfloat16 the
two ran within 10% of each other at every shape, so ``F.linear`` is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel_core.contracts.platform import LinearPolicy

_MKLDNN = torch.ops.mkldnn
#: Whether this torch build has oneDNN's linear and its weight reorder (private ops, checked once).
ONEDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and hasattr(_MKLDNN, "_linear_pointwise")
    and hasattr(_MKLDNN, "_reorder_linear_weight")
)
#: The row count oneDNN lays a packed weight out for: a hint, every row count computes correctly.
#: 64 is W1's decode batch; kernel-core-moe-torch measured the same choice for its experts.
PACK_ROWS_HINT = 64
#: Row counts up to this are computed as they are; above, padded to one of four steps per power of
#: two. oneDNN builds and caches one primitive per input shape, so a server meeting every row count
#: from 1 to thousands grew its memory by ~200 MiB in 25 s of ``kcore bench soak``; with the steps
#: it meets about 50 shapes per weight up to 8,192 rows, computing at most a quarter more rows.
EXACT_ROWS = 8
#: Least multiply-adds (rows x weight elements) for which an unpacked float32 weight goes to
#: oneDNN's linear rather than MKL's: below it oneDNN's ~10 us call overhead outweighs its speed.
UNPACKED_ONEDNN_MACS = 1 << 21


def padded_rows(rows: int) -> int:
    """The row count ``rows`` is computed at: exact up to :data:`EXACT_ROWS`, else the next
    multiple of a quarter of the power of two below it."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


def pack_dtypes() -> tuple[torch.dtype, ...]:
    """Dtypes oneDNN computes natively here: float32 wherever it is built, bfloat16 on CPUs with
    AVX512-BF16 or AMX (elsewhere oneDNN emulates it; ``F.linear`` is kept)."""
    if not ONEDNN_LINEAR:
        return ()
    return (torch.float32, torch.bfloat16) if _MKLDNN._is_mkldnn_bf16_supported() else (torch.float32,)


class CPULinearPolicy(LinearPolicy):
    """Projection weights of :func:`pack_dtypes` packed for oneDNN at load and multiplied by its
    linear; anything else (other dtypes, weights a model keeps unprepared) by ``F.linear``."""

    def __init__(self, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
        self.dtypes = pack_dtypes() if dtypes is None else dtypes
        packed = ", ".join(str(dtype).removeprefix("torch.") for dtype in self.dtypes)
        self.name = f"oneDNN linear on weights packed at load ({packed}), else F.linear" if packed else "F.linear"

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.device.type != "cpu" or weight.dim() != 2 or weight.dtype not in self.dtypes:
            return weight
        return _MKLDNN._reorder_linear_weight(weight.contiguous(), PACK_ROWS_HINT)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if weight.is_mkldnn or self._unpacked_to_onednn(x, weight):
            return _onednn_linear(x, weight, bias)
        return F.linear(x, weight, bias)

    def _unpacked_to_onednn(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether a plain weight's product is large float32 work oneDNN computes faster than MKL."""
        return (
            weight.dtype == torch.float32
            and torch.float32 in self.dtypes
            and x.dim() == 2
            and x.dtype == weight.dtype
            and weight.device.type == "cpu"
            and weight.dim() == 2
            and weight.is_contiguous()
            and x.shape[0] * weight.numel() >= UNPACKED_ONEDNN_MACS
        )


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear, its 2-D input padded to :func:`padded_rows` (one cached primitive per row count)."""
    rows = x.shape[0] if x.dim() == 2 else None
    padded = padded_rows(rows) if rows else rows
    if padded == rows:
        return _MKLDNN._linear_pointwise(x, weight, bias, "none", [], "")
    x = torch.cat((x, x.new_zeros(padded - rows, x.shape[1])))  # zeros: no NaN in discarded rows
    return _MKLDNN._linear_pointwise(x, weight, bias, "none", [], "")[:rows]
