"""The registry: names to loads, users per adapter, the host LRU of ``max_cpu_loras`` that never
drops an adapter in use, unload refused while used, and a fresh key for every load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterInUseError, AdapterLoadError, UnknownAdapterError
from kernel_core.adapters.loading import ServedKinds
from kernel_core.adapters.registry import AdapterInfo, AdapterRegistry
from kernel_core.peft.state_dict import WEIGHTS_NAME, write_adapter

from .test_slots import lora_serving, targets

MODULES = {"q": 8, "k": 4, "v": 4, "o": 8}  # module -> output rows, as test_slots' targets


def write(folder: Path, value: float, r: int = 2) -> Path:
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": list(MODULES)}
    tensors = {}
    for module, rows in MODULES.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.full((r, 8), value)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.full((rows, r), value)
    write_adapter(folder, config, tensors)
    return folder


@pytest.fixture
def registry() -> AdapterRegistry:
    unserved = {"IA3": "tuner 'ia3' from x provides no serving (TunerSpec.serving); a tuner plugin for 'IA3' that "
                       "names an AdapterServing would serve it"}
    return AdapterRegistry(ServedKinds({"LORA": lora_serving(targets(), 2)}, unserved), max_slots=2, max_cpu_loras=3)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    return {f"a{i}": write(tmp_path / f"a{i}", float(i)) for i in range(1, 6)}


def test_load_list_and_unknown_names(registry, folders):
    registry.load("a1", folders["a1"])
    registry.load("a2", folders["a2"])
    assert registry.names() == ["a1", "a2"]
    assert registry.info()[0] == AdapterInfo("a1", str(folders["a1"]), 2, True, None, 0, "LORA")
    with pytest.raises(UnknownAdapterError, match=r"unknown adapter 'nope' \(loaded: a1, a2\)"):
        registry.key_of("nope")
    with pytest.raises(UnknownAdapterError, match="'nope'"):
        registry.use("nope")
    with pytest.raises(UnknownAdapterError, match="'nope'"):
        registry.unload("nope")
    assert isinstance(UnknownAdapterError("x"), LookupError)


def test_a_failed_load_leaves_nothing_behind(registry, folders, tmp_path):
    with pytest.raises(AdapterLoadError, match="does not exist"):
        registry.load("a1", tmp_path / "missing")
    assert registry.names() == [] and registry.info() == []
    registry.load("a1", folders["a1"])  # the name is still free


def test_every_load_gets_a_new_key_even_under_the_same_name(registry, folders):
    registry.load("a1", folders["a1"])
    first = registry.key_of("a1")
    registry.unload("a1")
    registry.load("a1", folders["a1"])
    second = registry.key_of("a1")
    registry.load("a2", folders["a2"])
    assert len({first, second, registry.key_of("a2")}) == 3


def test_unload_is_refused_while_requests_use_it(registry, folders):
    registry.load("a1", folders["a1"])
    registry.use("a1")
    registry.use("a1")
    slot = registry.acquire("a1")
    with pytest.raises(AdapterInUseError, match=r"adapter 'a1' is used by 2 queued or running request\(s\)"):
        registry.unload("a1")
    registry.release("a1")
    registry.done("a1")
    with pytest.raises(AdapterInUseError, match="used by 1 "):
        registry.unload("a1")
    registry.done("a1")
    registry.unload("a1")
    assert registry.names() == [] and registry.slots.adapter_in[slot] is None


def test_the_host_lru_keeps_max_cpu_loras_and_never_evicts_an_adapter_in_use(registry, folders):
    for name in ("a1", "a2", "a3"):
        registry.load(name, folders[name])
    registry.use("a1")  # a1 is in use: it stays, whatever the LRU says
    registry.load("a4", folders["a4"])
    in_host = {info.name for info in registry.info() if info.in_host_memory}
    assert in_host == {"a1", "a3", "a4"}  # a2 was the least recently used unused one
    registry.load("a5", folders["a5"])
    assert {i.name for i in registry.info() if i.in_host_memory} == {"a1", "a4", "a5"}
    for name in ("a2", "a3"):  # read again from disk when a request needs it
        registry.use(name)
    in_host = {i.name for i in registry.info() if i.in_host_memory}
    assert {"a1", "a2", "a3"} <= in_host and len(in_host) == 3
    registry.use("a4")  # every cached one is in use now: the cache grows past max_cpu_loras
    assert {i.name for i in registry.info() if i.in_host_memory} == {"a1", "a2", "a3", "a4"}
    registry.done("a1")  # ...and shrinks back once one is no longer used (found by hypothesis)
    assert {i.name for i in registry.info() if i.in_host_memory} == {"a2", "a3", "a4"}


def test_listing_adapters_reads_nothing_from_disk(registry, folders):
    for name in ("a1", "a2", "a3", "a4"):
        registry.load(name, folders[name])
    before = [i.in_host_memory for i in registry.info()]
    assert before == [False, True, True, True]
    assert [i.rank for i in registry.info()] == [2] * 4
    assert [i.in_host_memory for i in registry.info()] == before


def test_slots_follow_requests(registry, folders):
    for name in ("a1", "a2", "a3"):
        registry.load(name, folders[name])
    assert registry.acquire("a1") is not None and registry.acquire("a2") is not None
    assert registry.can_acquire("a1") and not registry.can_acquire("a3")
    assert registry.acquire("a3") is None
    assert [(i.name, i.slot is not None) for i in registry.info()] == [("a1", True), ("a2", True), ("a3", False)]
    registry.release("a1")
    assert registry.can_acquire("a3") and registry.acquire("a3") is not None
    assert registry.slot_of("a1") is None
    assert registry.slots.holders == [1, 1]


def test_a_folder_changed_on_disk_after_eviction_is_refused_not_served_under_the_old_key(registry, folders):
    """Its key names KV computed with the old weights; serving new weights under it would reuse them."""
    for name in ("a1", "a2", "a3", "a4"):
        registry.load(name, folders[name])
    assert not registry.info()[0].in_host_memory
    write(folders["a1"], 42.0)  # same shapes, new weights
    stat = (folders["a1"] / WEIGHTS_NAME).stat()
    os.utime(folders["a1"] / WEIGHTS_NAME, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(AdapterLoadError, match="'a1'.*changed on disk since it was loaded"):
        registry.use("a1")
    assert registry.info()[0].num_requests == 0
    registry.unload("a1")
    registry.load("a1", folders["a1"])
    registry.use("a1")
    slot = registry.acquire("a1")
    assert torch.all(registry.slots.servings["LORA"].projections["o"].lora_a[slot, :2] == 42.0)


def test_prepare_then_register_and_names_checked(registry, folders):
    adapter = registry.prepare("a1", folders["a1"])
    assert registry.names() == []  # prepared: nothing registered yet
    registry.register(adapter)
    assert registry.names() == ["a1"] and registry.key_of("a1") == adapter.key
    other = registry.prepare("a2", folders["a2"])
    registry.load("a2", folders["a3"])  # another load won the name meanwhile
    with pytest.raises(ValueError, match="'a2' is already loaded"):
        registry.register(other)
    with pytest.raises(ValueError, match="must be letters, digits"):
        registry.prepare("a/b", folders["a1"])


@pytest.mark.parametrize(
    ("peft_type", "message"),
    [
        ("IA3", "adapters of kind 'IA3' cannot be served: tuner 'ia3' from x provides no serving (TunerSpec.serving); "
                "a tuner plugin for 'IA3' that names an AdapterServing would serve it (kinds served here: LORA)"),
        ("NEW", "adapters of kind 'NEW' cannot be served: no installed tuner plugin has that peft_type; install one "
                "whose TunerSpec names an AdapterServing (kinds served here: LORA)"),
    ],
)
def test_a_kind_nothing_serves_is_refused_at_load_naming_it_and_what_would_serve_it(registry, tmp_path, peft_type, message):
    folder = write(tmp_path / "a", 1.0)
    config = (folder / "adapter_config.json").read_text().replace('"LORA"', f'"{peft_type}"')
    (folder / "adapter_config.json").write_text(config)
    with pytest.raises(AdapterLoadError) as refused:
        registry.load("x", folder)
    assert str(refused.value) == f"adapter 'x' ({folder}): {message}"
    assert registry.names() == []
