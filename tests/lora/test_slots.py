"""The device slots: an adapter is copied in once and reused, held slots are never taken, free
ones are taken least recently used first, and forgetting drops only unheld weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kernel_core.contracts.lora import LoRAProjection
from kernel_core.lora.adapter import ServingAdapter
from kernel_core.lora.slots import AdapterSlots
from kernel_core_lora.punica import TorchLoRAKernel

RANK = 4


@dataclass
class Target:
    parts: dict[str, slice]
    weight: torch.Tensor
    lora: LoRAProjection | None = field(default=None)


def targets() -> dict[str, Target]:
    return {
        "qkv": Target({"q": slice(0, 8), "k": slice(8, 12), "v": slice(12, 16)}, torch.zeros(16, 8)),
        "o": Target({"o": slice(0, 8)}, torch.zeros(8, 8)),
    }


def adapter(key: int, only: str | None = None) -> ServingAdapter:
    """An adapter whose every factor is filled with its key (``only``: on that target alone)."""
    factors = {
        name: (torch.full((len(t.parts) * RANK, 8), float(key)), torch.full((t.weight.shape[0], len(t.parts) * RANK), float(key)))
        for name, t in targets().items() if only in (None, name)
    }
    return ServingAdapter(f"a{key}", key, Path("."), RANK, factors)


def slots(n: int = 2) -> tuple[AdapterSlots, dict[str, Target]]:
    t = targets()
    return AdapterSlots(t, max_loras=n, max_rank=RANK, kernel=TorchLoRAKernel(), dtype=torch.float32,
                        device=torch.device("cpu")), t


def test_every_target_gets_stacked_slots_shared_with_one_step():
    s, t = slots(3)
    assert t["qkv"].lora.lora_a.shape == (3, 3 * RANK, 8) and t["qkv"].lora.lora_b.shape == (3, 16, 3 * RANK)
    assert t["o"].lora.lora_a.shape == (3, RANK, 8) and t["o"].lora.lora_b.shape == (3, 8, RANK)
    assert t["qkv"].lora.step is t["o"].lora.step is s.step
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
