"""The engine's adapters, of every served kind: loaded by name, cached in host memory, placed
in slots on demand.

Disk -> host memory (an LRU of ``max_cpu_loras`` converted adapters; one that queued or running
requests use is never evicted) -> active slots (``max_loras``, see :mod:`slots`). Converting is
the kind's serving's (:mod:`kernel_core.contracts.serving`); nothing here knows a method. Every
load gets a fresh key, so KV blocks cached for an adapter are never reused for another adapter,
nor for a different adapter loaded later under the same name.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from kernel_core.adapters.loading import HostAdapter, ServedKinds, load_host_adapter
from kernel_core.adapters.slots import AdapterSlots
from kernel_core.errors import AdapterInUseError, AdapterLoadError, UnknownAdapterError

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class AdapterInfo:
    """What ``list_adapters`` reports about one loaded adapter."""

    name: str
    path: str
    rank: int
    in_host_memory: bool
    slot: int | None
    num_requests: int
    kind: str = ""  #: the adapter's ``peft_type``
    num_virtual_tokens: int = 0  #: placeholder positions its requests take before the prompt



class AdapterRegistry:
    """Loaded adapters by name; who uses them; where their weights are."""

    def __init__(self, kinds: ServedKinds, *, max_slots: int, max_cpu_loras: int) -> None:
        self.kinds, self.max_cpu_loras = kinds, max_cpu_loras
        self.slots = AdapterSlots(kinds.servings, max_slots=max_slots)
        self._paths: dict[str, Path] = {}
        self._keys: dict[str, int] = {}
        self._ranks: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._virtual: dict[str, int] = {}
        self._fingerprints: dict[str, tuple[tuple[int, int, int], ...]] = {}
        self._host: OrderedDict[str, HostAdapter] = OrderedDict()
        self._users: Counter[str] = Counter()
        self._next_key = itertools.count(1)

    # -- loading -----------------------------------------------------------------------------

    def load(self, name: str, path: str | Path) -> None:
        """Check, convert and cache one PEFT-format folder of a served kind under ``name``."""
        self.register(self.prepare(name, path))

    def prepare(self, name: str, path: str | Path) -> HostAdapter:
        """Read, check and convert a folder without touching the registry's state, so that it
        may run in another thread while the engine steps; :meth:`register` then adds it."""
        self._check_free(name)
        return load_host_adapter(name, path, next(self._next_key), self.kinds)

    def register(self, adapter: HostAdapter) -> None:
        """Make a :meth:`prepare`-d adapter usable by requests under its name."""
        name = adapter.name
        self._check_free(name)  # another load of the name may have won meanwhile
        self._paths[name], self._keys[name] = adapter.path, adapter.key
        self._ranks[name], self._fingerprints[name] = adapter.rank, adapter.fingerprint
        self._kinds[name], self._virtual[name] = adapter.kind, adapter.num_virtual_tokens
        self._cache(adapter)

    def _check_free(self, name: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"adapter name {name!r} must be letters, digits, '.', '_' or '-'")
        if name in self._paths:
            raise ValueError(f"an adapter named {name!r} is already loaded; unload it first")

    def unload(self, name: str) -> None:
        """Forget an adapter; refused while queued or running requests use it."""
        key = self.key_of(name)
        if self._users[name]:
            raise AdapterInUseError(
                f"adapter {name!r} is used by {self._users[name]} queued or running request(s); "
                "abort them or wait for them to finish before unloading it"
            )
        self.slots.forget(key)
        self._host.pop(name, None)
        del self._paths[name], self._keys[name], self._users[name], self._ranks[name], self._fingerprints[name]
        del self._kinds[name], self._virtual[name]

    def names(self) -> list[str]:
        return sorted(self._paths)

    def info(self) -> list[AdapterInfo]:
        return [
            AdapterInfo(name, str(self._paths[name]), self._ranks[name], name in self._host,
                        self.slots.slot_of(self._keys[name]), self._users[name], self._kinds[name],
                        self._virtual[name])
            for name in self.names()
        ]

    def num_virtual_tokens(self, name: str) -> int:
        """Placeholder positions a request on ``name`` takes before its prompt (see
        :attr:`~kernel_core.contracts.serving.ServedAdapter.num_virtual_tokens`)."""
        self.key_of(name)
        return self._virtual[name]

    def key_of(self, name: str) -> int:
        if name not in self._keys:
            loaded = ", ".join(self.names()) or "none"
            raise UnknownAdapterError(f"unknown adapter {name!r} (loaded: {loaded}); load it with load_adapter first")
        return self._keys[name]

    # -- requests ----------------------------------------------------------------------------

    def use(self, name: str) -> int:
        """A request for ``name`` was queued; returns the adapter's key. Its weights stay in
        host memory until every such request is done."""
        key = self.key_of(name)
        self._adapter(name)
        self._users[name] += 1
        return key

    def done(self, name: str) -> None:
        self._users[name] -= 1
        if not self._users[name]:
            self._trim()  # adapters cached while this one was in use may exceed max_cpu_loras

    def can_acquire(self, name: str) -> bool:
        return self.slots.can_acquire(self._keys[name])

    def acquire(self, name: str) -> int | None:
        """A slot for one running request of ``name``; None when every slot is held by others."""
        return self.slots.acquire(self._adapter(name))

    def release(self, name: str) -> None:
        self.slots.release(self._keys[name])

    def slot_of(self, name: str) -> int | None:
        return self.slots.slot_of(self._keys[name])

    # -- host cache --------------------------------------------------------------------------

    def _adapter(self, name: str) -> HostAdapter:
        """The converted adapter, from the host cache or read again from disk. A folder that
        changed since the load is refused: its key would name KV computed with other weights."""
        adapter = self._host.get(name)
        if adapter is None:
            try:
                adapter = load_host_adapter(name, self._paths[name], self._keys[name], self.kinds)
            except AdapterLoadError as exc:  # its folder was deleted, truncated or overwritten
                raise AdapterLoadError(
                    f"adapter {name!r} had left host memory (max_cpu_loras={self.max_cpu_loras}) and cannot be read "
                    f"again from {str(self._paths[name])!r}: {exc}"
                ) from None
            if adapter.fingerprint != self._fingerprints[name]:
                raise AdapterLoadError(
                    f"adapter {name!r}: {str(self._paths[name])!r} changed on disk since it was loaded "
                    "(it had left host memory, max_cpu_loras); unload it and load it again to serve the new files"
                )
            self._cache(adapter)
        self._host.move_to_end(name)
        return adapter

    def _cache(self, adapter: HostAdapter) -> None:
        self._host[adapter.name] = adapter
        self._trim(keep=adapter.name)

    def _trim(self, keep: str | None = None) -> None:
        """Evict the least recently used adapters no request uses (nor ``keep``) until at most
        ``max_cpu_loras`` remain; adapters in use may keep the cache above it for a while."""
        evictable = [name for name in self._host if not self._users[name] and name != keep]
        while len(self._host) > self.max_cpu_loras and evictable:
            evicted = evictable.pop(0)
            del self._host[evicted]
            log.debug("adapter %r left host memory (max_cpu_loras=%d)", evicted, self.max_cpu_loras)
