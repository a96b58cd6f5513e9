"""The precision exact-match generation runs in, the one training used: the weights stay fp32 and
``bf16``/``fp16`` run the forward under ``torch.autocast`` (training's own mixed precision, with
fp16's loss scaling, is ``Trainer``'s: ``TrainingArguments.bf16``/``fp16``).
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

