"""Batched unmerged LoRA for serving in plain torch, on any device (Punica's shrink and expand).

Per adapter slot in the step: two GEMMs over that slot's tokens. When each slot's tokens are
consecutive (one request, or requests sorted by adapter), slices replace the gather/scatter.
"""

from __future__ import annotations

import torch

from kernel_core.contracts.lora import LoRABatch, LoRAKernel


class TorchLoRAKernel(LoRAKernel):
    """``output[rows] += (x[rows] @ A[s].T) @ B[s].T`` for each slot ``s`` and its rows."""

    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        if len(batch.segments) == len(batch.slot_rows):  # every slot's tokens are one run
            for start, end, slot in batch.segments:
                output[start:end].addmm_(x[start:end] @ lora_a[slot].T, lora_b[slot].T)
            return
        for slot, rows in batch.slot_rows.items():
            shrunk = x.index_select(0, rows) @ lora_a[slot].T
            output.index_add_(0, rows, shrunk @ lora_b[slot].T)
