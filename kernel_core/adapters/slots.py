"""The active adapter slots on the model's device, shared by every served kind.

A slot is held while running requests use its adapter; a free slot keeps its adapter (a later
request for it costs no copy) until another adapter needs the room, least recently used first.
Placing an adapter in a slot is its kind's :meth:`~kernel_core.contracts.serving.AdapterServing.write`;
each step, every kind is told the tokens whose slot holds one of its adapters.

The engine keeps the bookkeeping (which adapter sits where, who holds it) and reaches the
device through its executor (``writer``); each worker keeps its own instance over its model's
servings, which it writes with :meth:`AdapterSlots.write` and steps with ``begin_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from kernel_core.adapters.loading import HostAdapter
from kernel_core.contracts.serving import NO_SLOT, AdapterServing, ServedAdapter, SlotBatch

#: Places a converted adapter of a kind in a slot: ``(slot, kind, served)``.
SlotWriter = Callable[[int, str, ServedAdapter], None]


class AdapterSlots:
    """``max_slots`` slots, their adapters and how many running requests hold each."""

    def __init__(self, servings: Mapping[str, AdapterServing], *, max_slots: int) -> None:
        self.servings = servings
        #: Where :meth:`acquire` copies an adapter in: :meth:`write` here, the executor in an engine.
        self.writer: SlotWriter = self.write
        self.adapter_in: list[int | None] = [None] * max_slots  # adapter key per slot
        self.kind_in: list[str | None] = [None] * max_slots
        self.holders = [0] * max_slots
        self._last_used = [0] * max_slots
        self._clock = 0

    def slot_of(self, adapter_key: int) -> int | None:
        return self.adapter_in.index(adapter_key) if adapter_key in self.adapter_in else None

    def can_acquire(self, adapter_key: int) -> bool:
        return self.slot_of(adapter_key) is not None or 0 in self.holders

    def acquire(self, adapter: HostAdapter) -> int | None:
        """The slot holding ``adapter`` for one more request, copying it in if needed; None when
        every slot is held by other adapters."""
        slot = self.slot_of(adapter.key)
        if slot is None:
            free = [s for s, holders in enumerate(self.holders) if holders == 0]
            if not free:
                return None
            slot = min(free, key=lambda s: (self.adapter_in[s] is not None, self._last_used[s]))
            self.writer(slot, adapter.kind, adapter.served)
            self.adapter_in[slot], self.kind_in[slot] = adapter.key, adapter.kind
        self.holders[slot] += 1
        self._clock += 1
        self._last_used[slot] = self._clock
        return slot

    def write(self, slot: int, kind: str, served: ServedAdapter) -> None:
        """Copy ``served`` into ``slot`` on this process's device, through its kind's serving."""
        self.servings[kind].write(slot, served)
        self.kind_in[slot] = kind

    def release(self, adapter_key: int) -> None:
        slot = self.slot_of(adapter_key)
        assert slot is not None and self.holders[slot] > 0, f"adapter {adapter_key} holds no slot"
        self.holders[slot] -= 1
        self._clock += 1
        self._last_used[slot] = self._clock  # used until now: evicted after those idle longer

    def forget(self, adapter_key: int) -> None:
        """Drop an unloaded adapter from its (unheld) slot."""
        slot = self.slot_of(adapter_key)
        if slot is not None:
            assert self.holders[slot] == 0, "an adapter in use cannot be forgotten"
            self.adapter_in[slot] = self.kind_in[slot] = None

    # -- steps -------------------------------------------------------------------------------

    def begin_step(self, batch: SlotBatch | None) -> None:
        """Tell each kind the tokens of this step that its adapters' slots serve."""
        used = {} if batch is None else {slot: self.kind_in[slot] for slot in batch.slot_rows}
        for kind, serving in self.servings.items():
            mine = [slot for slot, of in used.items() if of == kind]
            if not mine:
                serving.begin_step(None)
            elif len(mine) == len(used):
                serving.begin_step(batch)
            else:
                serving.begin_step(_only(batch, mine))  # type: ignore[arg-type]

    def end_step(self) -> None:
        for serving in self.servings.values():
            serving.end_step()


def _only(batch: SlotBatch, slots: list[int]) -> SlotBatch:
    """``batch`` with every row outside ``slots`` set to :data:`NO_SLOT`."""
    keep = torch.isin(batch.token_slots, torch.tensor(slots, device=batch.token_slots.device))
    return SlotBatch(
        token_slots=torch.where(keep, batch.token_slots, NO_SLOT),
        segments=tuple(s for s in batch.segments if s[2] in slots),
        slot_rows={slot: rows for slot, rows in batch.slot_rows.items() if slot in slots},
        positions=batch.positions,
    )
