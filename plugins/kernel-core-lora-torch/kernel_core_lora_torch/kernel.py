"""Batched unmerged LoRA for serving in plain torch, on any device (Punica's shrink and expand).

Few rows over several slots (decode steps): the rows gathered per
slot into ``[slots, rows, in]`` (padded to the busiest slot), then one batched shrink GEMM against
the slots' ``A`` and one batched expand GEMM against their ``B``, added back with one scatter; the
gather is built once per step. Otherwise, per slot in the step, two GEMMs over that slot's
tokens; when each slot's tokens are consecutive (one request, or requests sorted by adapter),
slices replace the gather/scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernel_core.contracts.lora import LoRABatch, LoRAKernel

#: Most rows a step may have for the batched GEMMs. On a 2-thread Zen 5 (avx512_bf16),
#: SmolLM2-135M's shapes, 8 slots, 64-128 rows, a bfloat16 projection's delta took 170-570 us that
#: way against 220-1180 us as one GEMM over every slot's ``A`` with the other slots masked (the
#: previous path) and 400-610 us per slot. float32 on the same machine, quiet, 8-64 rows over 8
#: slots: 29-139 us batched against 114-513 us per slot (its small per-slot GEMMs are bound by the
#: calls, four per slot).
BATCHED_MAX_ROWS = 128


@dataclass(frozen=True)
class _Gather:
    """One step's rows grouped by slot: ``rows [slots, most]`` (a short slot's padding repeats
    its first row), which slots (None: all, in order), and ``padding [slots, most, 1]``, true where
    a row is padding (filled with zeros, not multiplied, so NaN stays out; None: no padding)."""

    rows: torch.Tensor
    slots: torch.Tensor | None
    padding: torch.Tensor | None


class TorchLoRAKernel(LoRAKernel):
    """``output[rows] += (x[rows] @ A[s].T) @ B[s].T`` for each slot ``s`` and its rows."""

    def __init__(self) -> None:
        self._gather: tuple[LoRABatch, int, _Gather] | None = None

    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        if x.shape[0] <= BATCHED_MAX_ROWS and len(batch.slot_rows) > 1:
            gather = self._grouped(batch, lora_a.shape[0])
            if gather.slots is not None:
                lora_a, lora_b = lora_a.index_select(0, gather.slots), lora_b.index_select(0, gather.slots)
            delta = torch.bmm(torch.bmm(x[gather.rows], lora_a.transpose(1, 2)), lora_b.transpose(1, 2))
            if gather.padding is not None:
                delta.masked_fill_(gather.padding, 0)
            output.index_add_(0, gather.rows.flatten(), delta.flatten(0, 1))
            return
        if len(batch.segments) == len(batch.slot_rows):  # every slot's tokens are one run
            for start, end, slot in batch.segments:
                output[start:end].addmm_(x[start:end] @ lora_a[slot].T, lora_b[slot].T)
            return
        for slot, rows in batch.slot_rows.items():
            shrunk = x.index_select(0, rows) @ lora_a[slot].T
            output.index_add_(0, rows, shrunk @ lora_b[slot].T)

    def _grouped(self, batch: LoRABatch, slots: int) -> _Gather:
        """The step's :class:`_Gather`; every projection of a step shares its batch: built once a step."""
        cached = self._gather
        if cached is not None and cached[0] is batch and cached[1] == slots:
            return cached[2]
        used = sorted(batch.slot_rows)
        groups = [batch.slot_rows[slot] for slot in used]
        most = max(len(rows) for rows in groups)
        rows = torch.stack([torch.cat((r, r[:1].expand(most - len(r)))) for r in groups])
        device = rows.device
        padding = None
        if any(len(r) < most for r in groups):
            counts = torch.tensor([len(r) for r in groups], device=device)
            padding = (torch.arange(most, device=device) >= counts[:, None]).unsqueeze(-1)
        every = used == list(range(slots))
        gather = _Gather(rows, None if every else torch.tensor(used, device=device), padding)
        self._gather = (batch, slots, gather)
        return gather
