"""The device slots: an adapter is copied in once and reused, held slots are never taken, free
ones are taken least recently used first, forgetting drops only unheld weights, and each step
every served kind sees only the rows of its own adapters' slots. LoRA's serving (the plugin's)
lays out the stacked A/B its kernel reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kernel_core.adapters.loading import HostAdapter
from kernel_core.adapters.slots import AdapterSlots
from kernel_core.contracts.adapter_targets import ProjectionHook
from kernel_core.contracts.lora import LoRAProjection
from kernel_core.contracts.serving import NO_SLOT, AdapterServing, ServedAdapter, ServingContext, SlotBatch
from kernel_core_lora_torch.kernel import TorchLoRAKernel
from kernel_core_lora.serving import LoraServing, ServedLora

RANK = 4


@dataclass
class Target:
    parts: dict[str, slice]
    weight: torch.Tensor
    hooks: list[ProjectionHook] = field(default_factory=list)

    @property
    def lora(self) -> LoRAProjection:
        (hook,) = self.hooks
        assert isinstance(hook, LoRAProjection)
        return hook


def targets() -> dict[str, Target]:
    return {
        "qkv": Target({"q": slice(0, 8), "k": slice(8, 12), "v": slice(12, 16)}, torch.zeros(16, 8)),
        "o": Target({"o": slice(0, 8)}, torch.zeros(8, 8)),
    }


@dataclass
class Model:
    targets: dict[str, Target]

    def adapter_targets(self) -> dict[str, Target]:
        return self.targets


def context(n: int) -> ServingContext:
    return ServingContext(max_slots=n, max_rank=RANK, dtype=torch.float32, device=torch.device("cpu"),
                          settings={"lora_kernel": None}, select_kernel=lambda kind, name: TorchLoRAKernel())


def lora_serving(t: dict[str, Target], n: int) -> LoraServing:
    """LoRA's serving on these targets, with ``n`` slots."""
    return LoraServing(Model(t), context(n))


def adapter(key: int, only: str | None = None) -> HostAdapter:
    """An adapter whose every factor is filled with its key (``only``: on that target alone)."""
    factors = {
        name: (torch.full((len(t.parts) * RANK, 8), float(key)), torch.full((t.weight.shape[0], len(t.parts) * RANK), float(key)))
        for name, t in targets().items() if only in (None, name)
    }
    return HostAdapter(f"a{key}", key, "LORA", Path("."), ServedLora(factors, RANK))


def slots(n: int = 2) -> tuple[AdapterSlots, dict[str, Target]]:
    t = targets()
    return AdapterSlots({"LORA": lora_serving(t, n)}, max_slots=n), t


def test_every_target_gets_stacked_slots_shared_with_one_step():
    s, t = slots(3)
    assert t["qkv"].lora.lora_a.shape == (3, 3 * RANK, 8) and t["qkv"].lora.lora_b.shape == (3, 16, 3 * RANK)
    assert t["o"].lora.lora_a.shape == (3, RANK, 8) and t["o"].lora.lora_b.shape == (3, 8, RANK)
    assert t["qkv"].lora.step is t["o"].lora.step is s.servings["LORA"].step
    assert LoraServing.slot_nbytes(Model(t), context(3)) == 3 * RANK * 4 * ((3 * (16 + 8)) + (8 + 8))
    assert s.adapter_in == [None] * 3 and s.holders == [0] * 3


def test_an_adapter_is_copied_in_once_and_its_slot_is_reused():
    s, t = slots()
    first = s.acquire(adapter(1))
    assert s.acquire(adapter(1)) == first and s.holders[first] == 2
    assert torch.all(t["qkv"].lora.lora_a[first] == 1) and torch.all(t["o"].lora.lora_b[first] == 1)
    s.release(1)
    s.release(1)
    assert s.holders == [0, 0] and s.slot_of(1) == first  # kept: a later request costs no copy
    t["qkv"].lora.lora_a[first].fill_(99)  # a copy would overwrite this
    assert s.acquire(adapter(1)) == first and torch.all(t["qkv"].lora.lora_a[first] == 99)


def test_held_slots_are_never_taken_and_free_ones_go_least_recently_used_first():
    s, t = slots()
    one, two = s.acquire(adapter(1)), s.acquire(adapter(2))
    assert one != two
    assert not s.can_acquire(3) and s.acquire(adapter(3)) is None  # both held
    assert s.can_acquire(1) and s.can_acquire(2)  # already in a slot: more requests may join
    s.release(2)
    s.release(1)  # 2 was used less recently than 1
    assert s.can_acquire(3) and s.acquire(adapter(3)) == two
    assert s.slot_of(2) is None and s.slot_of(1) == one
    assert torch.all(t["qkv"].lora.lora_a[two] == 3)


def test_empty_slots_are_filled_before_any_cached_adapter_is_evicted():
    s, _ = slots(3)
    s.acquire(adapter(1))
    s.release(1)
    s.acquire(adapter(2))
    s.release(2)
    s.acquire(adapter(3))
    assert sorted(filter(None, s.adapter_in)) == [1, 2, 3]


def test_targets_an_adapter_leaves_alone_are_zeroed_in_its_slot():
    s, t = slots(1)
    s.acquire(adapter(1))
    s.release(1)
    slot = s.acquire(adapter(2, only="o"))
    assert torch.all(t["o"].lora.lora_a[slot] == 2)
    assert not t["qkv"].lora.lora_a[slot].any() and not t["qkv"].lora.lora_b[slot].any()


def test_forget_drops_an_unheld_adapter_and_refuses_a_held_one():
    s, _ = slots()
    slot = s.acquire(adapter(1))
    with pytest.raises(AssertionError, match="in use"):
        s.forget(1)
    s.release(1)
    s.forget(1)
    assert s.slot_of(1) is None and s.adapter_in[slot] is None
    s.forget(5)  # never placed: nothing to do
    with pytest.raises(AssertionError, match="holds no slot"):
        s.release(1)


class Recording(AdapterServing):
    """A kind that records what it is asked to place and which rows each step sends it."""

    @classmethod
    def slot_nbytes(cls, model, context: ServingContext) -> int:
        return 0

    def __init__(self, model=None, context=None) -> None:
        self.written: dict[int, ServedAdapter] = {}
        self.batches: list[SlotBatch | None] = []

    def convert(self, name, config, tensors, where) -> ServedAdapter:
        raise NotImplementedError

    def write(self, slot: int, adapter: ServedAdapter) -> None:
        self.written[slot] = adapter

    def begin_step(self, batch: SlotBatch | None) -> None:
        self.batches.append(batch)


def test_each_kind_is_written_and_sees_only_its_own_slots_rows():
    t = targets()
    lora, other = lora_serving(t, 3), Recording()
    s = AdapterSlots({"LORA": lora, "OTHER": other}, max_slots=3)
    served = ServedLora({}, 0)
    one = s.acquire(adapter(1))
    two = s.acquire(HostAdapter("b", 2, "OTHER", Path("."), served))
    assert other.written == {two: served} and torch.all(t["o"].lora.lora_a[one] == 1)
    batch = SlotBatch.from_token_slots([one, one, NO_SLOT, two], torch.device("cpu"))
    s.begin_step(batch)
    mine = other.batches[-1]
    assert mine.token_slots.tolist() == [NO_SLOT, NO_SLOT, NO_SLOT, two] and set(mine.slot_rows) == {two}
    assert mine.segments == ((3, 4, two),)
    assert lora.step.batch.token_slots.tolist() == [one, one, NO_SLOT, NO_SLOT] and set(lora.step.batch.slot_rows) == {one}
    s.end_step()
    assert lora.step.batch is None and other.batches[-1] is None
    s.begin_step(SlotBatch.from_token_slots([one, NO_SLOT], torch.device("cpu")))  # one kind: the batch as is
    assert other.batches[-1] is None and lora.step.batch.token_slots.tolist() == [one, NO_SLOT]
