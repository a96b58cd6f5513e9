"""The Triton LoRA kernel: inputs checked and the step's row blocks built in torch, shrink and
expand in Triton (:mod:`kernel_core_lora_triton.ops`, imported on first use so that this module
imports without triton or a GPU and the class can say why it cannot run)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import AfterValidator, Field

from kernel_core.contracts.lora import LoRABatch, LoRAKernel
from kernel_core.contracts.settings import PluginSettings
from kernel_core_sdk.triton import triton_unavailable_reason

#: Activation dtypes the kernels take (float32 accumulation in each).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"{value} is not a power of two")
    return value


#: ``tl.arange`` takes powers of two and ``tl.dot`` at least 16 in every dimension.
Tile = Annotated[int, Field(ge=16), AfterValidator(_power_of_two)]


class TritonLoRASettings(PluginSettings):
    """``--plugin-option lora-kernel.triton.KEY=VALUE``: the kernels' tile sizes (untuned defaults,
    sized for decode steps of a few rows per slot and ranks up to 64)."""

    block_m: Tile = Field(16, description="Rows per program; a longer segment of one slot takes several blocks.")
    block_k: Tile = Field(64, description="The shrink's step over the input features.")
    block_r: Tile = Field(32, description="Rank tile: the shrink's output columns, the expand's reduction step.")
    block_n: Tile = Field(64, description="The expand's output columns per program.")
    split_k: int = Field(1, ge=1, description="Shrink programs sharing one reduction, added atomically.")
    num_warps: int = Field(4, ge=1, description="Warps per program on a GPU.")


class TritonLoRAKernel(LoRAKernel):
    """``output[t] += (x[t] @ A[s].T) @ B[s].T`` per token ``t`` of slot ``s``: one shrink launch
    into a float32 ``[T, R]`` intermediate, one expand launch added into ``output``, with the tile
    sizes of :class:`TritonLoRASettings`."""

    Settings: ClassVar[type[PluginSettings]] = TritonLoRASettings

    def __init__(self, settings: TritonLoRASettings | None = None) -> None:
        problem = self.unavailable_reason()
        if problem is not None:
            raise RuntimeError(f"the Triton LoRA kernel cannot run here: {problem}")
        self.tiles = settings or TritonLoRASettings()
        from kernel_core_lora_triton import ops

        self._ops = ops
        self._blocks: tuple[LoRABatch, torch.device, torch.Tensor] | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None on a CUDA (ROCm reports "cuda") or XPU machine with triton installed, and on a
        machine without one only in Triton's interpreter (``TRITON_INTERPRET=1`` set before the
        kernels are imported); else why not."""
        return triton_unavailable_reason("kernel_core_lora_triton.ops")

    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        check_inputs(output, x, lora_a, lora_b, batch)
        if not batch.segments:
            return
        if x.device.type == "cpu" and not self._ops.INTERPRETED:
            raise RuntimeError(
                "the Triton LoRA kernel runs on cuda or xpu tensors; on CPU tensors only in Triton's "
                "interpreter (TRITON_INTERPRET=1 set before kernel_core_lora_triton.ops is imported)"
            )
        blocks = self._row_blocks(batch, x.device)
        rank = lora_a.shape[1]
        tiles = self.tiles
        new = torch.zeros if tiles.split_k > 1 else torch.empty
        inter = new(x.shape[0], rank, dtype=torch.float32, device=x.device)
        self._ops.shrink(
            x, lora_a, inter, blocks, block_m=tiles.block_m, block_r=tiles.block_r, block_k=tiles.block_k,
            split_k=tiles.split_k, num_warps=tiles.num_warps,
        )
        self._ops.expand(
            inter, lora_b, output, blocks, block_m=tiles.block_m, block_n=tiles.block_n, block_r=tiles.block_r,
            num_warps=tiles.num_warps,
        )

    def _row_blocks(self, batch: LoRABatch, device: torch.device) -> torch.Tensor:
        """``[3, num_blocks]`` int32 (first row, end row, slot): each segment cut into runs of at
        most ``block_m`` rows. Every projection of a step shares its batch: built and copied to
        the device once a step."""
        cached = self._blocks
        if cached is not None and cached[0] is batch and cached[1] == device:
            return cached[2]
        step = self.tiles.block_m
        blocks = [(row, min(row + step, end), slot) for start, end, slot in batch.segments for row in range(start, end, step)]
        table = torch.tensor(blocks, dtype=torch.int32).T.contiguous().to(device)
        self._blocks = (batch, device, table)
        return table


def check_inputs(
    output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
) -> None:
    """Refuse, naming the argument, what the kernels would misread: tensors of the wrong rank,
    shapes that disagree (tokens, input and output features, rank, slots), dtypes other than
    ``x``'s or outside :data:`DTYPES`, tensors on another device than ``x``, a batch slot past
    the stacked factors."""
    if output.dim() != 2 or x.dim() != 2 or lora_a.dim() != 3 or lora_b.dim() != 3:
        raise ValueError(
            f"expected output [T, out], x [T, in], lora_a [slots, R, in], lora_b [slots, out, R]; got "
            f"{tuple(output.shape)}, {tuple(x.shape)}, {tuple(lora_a.shape)}, {tuple(lora_b.shape)}"
        )
    tokens, in_features = x.shape
    slots, rank, _ = lora_a.shape
    expected = {
        "output": (output, (tokens, output.shape[1])),
        "lora_a": (lora_a, (slots, rank, in_features)),
        "lora_b": (lora_b, (slots, output.shape[1], rank)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape} (from x {tuple(x.shape)}, lora_a, output)")
        if tensor.dtype != x.dtype:
            raise ValueError(f"{name} is {tensor.dtype}, x is {x.dtype}: all four must share the model's dtype")
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device}, x on {x.device}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x is {x.dtype}; the Triton LoRA kernel takes {', '.join(map(str, DTYPES))}")
    if batch.token_slots.shape[0] != tokens:
        raise ValueError(f"batch.token_slots has {batch.token_slots.shape[0]} tokens, x has {tokens}")
    used = [slot for _, _, slot in batch.segments]
    if used and not 0 <= min(used) <= max(used) < slots:
        raise ValueError(f"batch.segments use slots {sorted(set(used))}; lora_a and lora_b stack {slots}")
