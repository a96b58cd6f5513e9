"""The active adapter slots on the model's device, read by the LoRA kernel.

Each LoRA target gets ``A [max_loras, P * R, in]`` and ``B [max_loras, out, P * R]``. A slot is
held while running requests use its adapter; a free slot keeps its adapter (a later request for
it costs no copy) until another adapter needs the room, least recently used first.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kernel_core.contracts.lora import LoRAKernel, LoRAProjection, LoRAStep, LoRATarget
from kernel_core.lora.adapter import ServingAdapter


def slots_nbytes(targets: Mapping[str, LoRATarget], max_loras: int, max_rank: int, dtype: torch.dtype) -> int:
    """Bytes :class:`AdapterSlots` allocates for these targets: checked before allocating."""
    return sum(
        max_loras * len(t.parts) * max_rank * (t.weight.shape[0] + t.weight.shape[1]) * dtype.itemsize
        for t in targets.values()
    )


class AdapterSlots:
    """``max_loras`` slots, their adapters and how many running requests hold each."""

    def __init__(
        self,
        targets: Mapping[str, LoRATarget],
        *,
        max_loras: int,
        max_rank: int,
        kernel: LoRAKernel,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.step = LoRAStep()
        self.projections: dict[str, LoRAProjection] = {}
        for key, target in targets.items():
            out_features, in_features = target.weight.shape
            width = len(target.parts) * max_rank
            target.lora = self.projections[key] = LoRAProjection(
                torch.zeros(max_loras, width, in_features, dtype=dtype, device=device),
                torch.zeros(max_loras, out_features, width, dtype=dtype, device=device),
                kernel,
                self.step,
            )
        self.adapter_in: list[int | None] = [None] * max_loras  # adapter key per slot
        self.holders = [0] * max_loras
        self._last_used = [0] * max_loras
        self._clock = 0

    def slot_of(self, adapter_key: int) -> int | None:
        return self.adapter_in.index(adapter_key) if adapter_key in self.adapter_in else None

    def can_acquire(self, adapter_key: int) -> bool:
        return self.slot_of(adapter_key) is not None or 0 in self.holders

    def acquire(self, adapter: ServingAdapter) -> int | None:
        """The slot holding ``adapter`` for one more request, copying it in if needed; None when
        every slot is held by other adapters."""
        slot = self.slot_of(adapter.key)
        if slot is None:
            free = [s for s, holders in enumerate(self.holders) if holders == 0]
            if not free:
                return None
            slot = min(free, key=lambda s: (self.adapter_in[s] is not None, self._last_used[s]))
            self._write(slot, adapter)
        self.holders[slot] += 1
        self._clock += 1
        self._last_used[slot] = self._clock
        return slot

    def release(self, adapter_key: int) -> None:
        slot = self.slot_of(adapter_key)
        assert slot is not None and self.holders[slot] > 0, f"adapter {adapter_key} holds no slot"
        self.holders[slot] -= 1
        self._clock += 1
        self._last_used[slot] = self._clock  # used until now: evicted after those idle longer

    def forget(self, adapter_key: int) -> None:
        """Drop an unloaded adapter's weights from its (unheld) slot."""
        slot = self.slot_of(adapter_key)
        if slot is not None:
            assert self.holders[slot] == 0, "an adapter in use cannot be forgotten"
            self.adapter_in[slot] = None

    def _write(self, slot: int, adapter: ServingAdapter) -> None:
        for key, projection in self.projections.items():
            factors = adapter.factors.get(key)
            if factors is None:
                projection.lora_a[slot].zero_()
                projection.lora_b[slot].zero_()
            else:
                projection.lora_a[slot].copy_(factors[0])
                projection.lora_b[slot].copy_(factors[1])
        self.adapter_in[slot] = adapter.key
