"""Batched unmerged LoRA for serving in plain torch, on any device (Punica's shrink and expand).

Few rows over several slots in a reduced-precision dtype (decode steps): one shrink GEMM
against every slot's ``A`` at once, each row's other slots' columns zeroed by a mask built once
per step, then one expand GEMM against every slot's ``B`` laid out ``[slots * R, out]`` (kept per ``lora_b`` until it is
written). Otherwise, per slot in the step, two GEMMs over that slot's tokens; when each slot's
tokens are consecutive (one request, or requests sorted by adapter), slices replace the
gather/scatter.
"""

from __future__ import annotations

import torch

from kernel_core.contracts.lora import LoRABatch, LoRAKernel

#: Most rows a step may have for the all-slots GEMMs, which only pay off below float32: on a
#: 2-thread Zen 5 (avx512_bf16), SmolLM2-135M's shapes, 8 slots, up to 128 rows, a bfloat16
#: projection took 90-410 us that way against 400-610 us per slot, while float32 took 60-1250 us
#: against 60-350 us (its per-slot GEMMs are cheap, the all-slots ones do 8x the work).
ALL_SLOTS_MAX_ROWS = 128


class TorchLoRAKernel(LoRAKernel):
    """``output[rows] += (x[rows] @ A[s].T) @ B[s].T`` for each slot ``s`` and its rows."""

    def __init__(self) -> None:
        self._mask: tuple[LoRABatch, int, torch.Tensor | None] | None = None
        self._expand: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        few_rows = x.shape[0] <= ALL_SLOTS_MAX_ROWS and x.dtype != torch.float32
        others = self._others(batch, lora_a.shape[0]) if few_rows else None
        if others is not None:
            slots, width, _ = lora_a.shape
            shrunk = (x @ lora_a.reshape(slots * width, -1).T).view(x.shape[0], slots, width)
            shrunk.masked_fill_(others, 0)
            output.addmm_(shrunk.view(x.shape[0], slots * width), self._expand_weight(lora_b))
            return
        if len(batch.segments) == len(batch.slot_rows):  # every slot's tokens are one run
            for start, end, slot in batch.segments:
                output[start:end].addmm_(x[start:end] @ lora_a[slot].T, lora_b[slot].T)
            return
        for slot, rows in batch.slot_rows.items():
            shrunk = x.index_select(0, rows) @ lora_a[slot].T
            output.index_add_(0, rows, shrunk @ lora_b[slot].T)

    def _others(self, batch: LoRABatch, slots: int) -> torch.Tensor | None:
        """``[T, slots, 1]``, true where slot ``s`` is not row ``t``'s (filled, not multiplied, so
        NaN stays out); None when the step has one slot or rows without one (the all-slots GEMMs
        would touch those). Every projection of a step shares its batch: built once a step."""
        cached = self._mask
        if cached is not None and cached[0] is batch and cached[1] == slots:
            return cached[2]
        others = None
        covered = sum(end - start for start, end, _ in batch.segments)
        if len(batch.slot_rows) > 1 and covered == batch.token_slots.shape[0]:
            slot_ids = torch.arange(slots, device=batch.token_slots.device)
            others = (batch.token_slots[:, None] != slot_ids).unsqueeze(-1)
        self._mask = (batch, slots, others)
        return others

    def _expand_weight(self, lora_b: torch.Tensor) -> torch.Tensor:
        """``lora_b [slots, out, R]`` as ``[slots * R, out]``, copied again only after the engine
        writes a slot (its version moves); inference tensors carry no version, so no cache."""
        slots, out, width = lora_b.shape
        if torch.is_inference(lora_b):
            return lora_b.transpose(1, 2).reshape(slots * width, out)
        cached = self._expand.get(id(lora_b))
        if cached is not None and cached[0] is lora_b and cached[1] == lora_b._version:
            return cached[2]
        expand = lora_b.transpose(1, 2).reshape(slots * width, out)
        self._expand[id(lora_b)] = (lora_b, lora_b._version, expand)
        return expand
