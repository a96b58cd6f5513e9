"""Executes one scheduled step: every scheduled token of every request flattened into one batch,
attention over the paged KV cache that this module allocates. Callers run it under
``torch.inference_mode()``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.executor import StepRequest
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.contracts.serving import NO_SLOT, SlotBatch


def bytes_per_block(
    attention: AttentionBackend, model: ModelArchitecture, block_size: int, dtype: torch.dtype
) -> int:
    """KV bytes one block costs across all layers, in the backend's cache layout."""
    per_layer = math.prod(attention.kv_cache_shape(1, block_size, model.num_kv_heads, model.head_size))
    return per_layer * model.num_layers * torch.empty((), dtype=dtype).element_size()


@dataclass
class StepInputs:
    """The flattened batch of one step."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    metadata: AttentionMetadata
    last_rows: torch.Tensor  # [B] row of each request's last scheduled token
    slots: SlotBatch | None = None  # each token's adapter slot, when serving adapters


class StepAdapters(Protocol):
    """What applies the adapters of a step's tokens (the engine's adapter slots)."""

    def begin_step(self, batch: SlotBatch | None) -> None: ...

    def end_step(self) -> None: ...


class ModelRunner:
    """Owns the model, the attention backend and the KV cache tensors (one per layer)."""

    def __init__(
        self,
        model: ModelArchitecture,
        attention: AttentionBackend,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        adapters: StepAdapters | None = None,
    ) -> None:
        self.model, self.attention = model, attention
        self.adapters = adapters
        self.block_size, self.device = block_size, device
        shape = attention.kv_cache_shape(num_blocks, block_size, model.num_kv_heads, model.head_size)
        self.kv_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(model.num_layers)]
        self.scale = model.head_size**-0.5

    def prepare(self, requests: Sequence[StepRequest]) -> StepInputs:
        """Token ids, positions and attention metadata for the scheduled slice of each request,
        and each token's adapter slot when this runner serves adapters."""
        starts = [r.start for r in requests]
        num_new_tokens = [len(r.token_ids) for r in requests]
        block_tables = [r.block_table for r in requests]
        ids: list[int] = []
        for request in requests:
            ids += request.token_ids
        adapter_slots = [r.adapter_slot for r in requests] if self.adapters is not None else None
        query_lens = torch.tensor(num_new_tokens, dtype=torch.int64)
        query_start_loc = torch.zeros(len(requests) + 1, dtype=torch.int64)
        torch.cumsum(query_lens, 0, out=query_start_loc[1:])
        request_of_row = torch.repeat_interleave(torch.arange(len(requests)), query_lens)
        row_offsets = torch.arange(len(ids)) - query_start_loc[request_of_row]
        positions = torch.tensor(starts, dtype=torch.int64)[request_of_row] + row_offsets
        width = max(len(table) for table in block_tables)
        tables = torch.tensor([table + [0] * (width - len(table)) for table in block_tables], dtype=torch.int64)
        slots = tables[request_of_row, positions // self.block_size] * self.block_size + positions % self.block_size
        seq_lens = [start + count for start, count in zip(starts, num_new_tokens)]
        metadata = AttentionMetadata(
            slot_mapping=slots.to(self.device),
            query_start_loc=query_start_loc.to(torch.int32).to(self.device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=self.device),
            block_tables=tables.to(torch.int32).to(self.device),
            block_size=self.block_size,
            scale=self.scale,
            seq_lens_host=tuple(seq_lens),
            query_lens_host=tuple(num_new_tokens),
        )
        device_positions = positions.to(self.device)
        return StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=self.device),
            positions=device_positions,
            metadata=metadata,
            last_rows=(query_start_loc[1:] - 1).to(self.device),
            slots=_slot_batch(adapter_slots, num_new_tokens, device_positions),
        )

    def execute(self, inputs: StepInputs) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` of the step; the KV cache is updated in place."""
        if self.adapters is None:
            return self.model.forward(inputs.input_ids, inputs.positions, self.kv_caches, inputs.metadata)
        self.adapters.begin_step(inputs.slots)
        try:
            return self.model.forward(inputs.input_ids, inputs.positions, self.kv_caches, inputs.metadata)
        finally:
            self.adapters.end_step()

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """Logits of the selected rows only: ``lm_head`` is the costliest GEMM of a decode step.
        None on a tensor-parallel rank other than 0 (the model gathers them to rank 0)."""
        logits = self.model.compute_logits(hidden.index_select(0, rows))
        return None if logits is None else logits.float()


def _slot_batch(slots: Sequence[int] | None, counts: Sequence[int], positions: torch.Tensor) -> SlotBatch | None:
    """Per-token slots from per-request ones; None when no request of the step uses an adapter."""
    if slots is None or all(slot == NO_SLOT for slot in slots):
        return None
    per_token = [slot for slot, count in zip(slots, counts) for _ in range(count)]
    return SlotBatch.from_token_slots(per_token, positions.device, positions)
