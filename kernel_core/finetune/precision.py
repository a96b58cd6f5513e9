"""Training precision: the weights stay fp32; bf16 and fp16 run the forward under autocast.

- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast`` with bfloat16 (on CPU and CUDA). bf16 has fp32's range, so no loss
  scaling is needed.
- ``fp16``: ``torch.autocast`` with float16 plus a ``torch.amp.GradScaler``: fp16's narrow range
  would flush small gradients to zero, so the loss is scaled up before backward and the gradients
  are unscaled before clipping and the optimizer step (a step whose gradients overflowed is skipped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype matmuls run in under ``precision``; ``None`` for fp32 (no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return _DTYPES.get(precision)


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """The context every forward (training, eval, generation) runs in for ``precision``."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (the only precision that needs one), else ``None``."""
    if autocast_dtype(precision) is not torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)
