"""Tile sizes of the expert GEMMs per device type: a small fixed table, not tuned here.

Why these values:

- ``block_m`` is also the padding of every expert's rows (:mod:`kernel_core_moe_triton.align`).
  When experts get few rows (decode: a few tokens times top-k spread over all experts) a 64-row
  block would be mostly padding, so blocks of 16 rows, the smallest ``tl.dot`` takes, are used
  until experts average more than 16 rows; then 64 rows, which reuse each weight tile four
  times as often. That is the split vLLM's untuned default configuration makes (its small
  blocks serve batches of at most one token per expert).
- On GPUs (``cuda``, which ROCm's torch also reports, and ``xpu`` until measured there) the
  tiles are vLLM's untuned defaults for its fused_moe kernel: 16x32x64 for few rows, 64x64x32
  with 4 warps for many. The gate/up kernel holds two accumulators of ``block_m x block_n``
  (gate and up), still 32 KiB of float32 registers per program at 64x64.
- ``cpu`` exists only for Triton's interpreter (``TRITON_INTERPRET=1``), where the tests run:
  it executes each program as numpy calls, so the cost is the number of programs and K steps,
  not the tile size; the smallest row block keeps padding low and 32-wide tiles cover the
  test shapes in one program column and one K step.

Measured tables (per GPU model and shape, as vLLM keeps) belong to a tuning run on the device.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tiles:
    """One launch configuration of the expert GEMM kernel."""

    block_m: int  #: rows (token-expert pairs) per program, and the per-expert padding
    block_n: int  #: output columns per program
    block_k: int  #: reduction step
    num_warps: int
    num_stages: int


_GPU = (Tiles(16, 32, 64, num_warps=4, num_stages=3), Tiles(64, 64, 32, num_warps=4, num_stages=3))
#: Device type → (tiles when experts average at most :data:`FEW_ROWS` rows, tiles otherwise).
TILES: dict[str, tuple[Tiles, Tiles]] = {
    "cuda": _GPU,
    "xpu": _GPU,
    "cpu": (Tiles(16, 32, 32, num_warps=1, num_stages=1),) * 2,
}
FEW_ROWS = 16


def tiles_for(device_type: str, num_pairs: int, num_experts: int) -> Tiles:
    """The tiles for ``num_pairs`` token-expert pairs over ``num_experts`` experts on ``device_type``."""
    if device_type not in TILES:
        raise ValueError(f"the Triton MoE kernel has no tiles for device type {device_type!r}; known: {sorted(TILES)}")
    few, many = TILES[device_type]
    return few if num_pairs <= FEW_ROWS * num_experts else many
