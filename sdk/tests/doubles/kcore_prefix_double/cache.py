"""Prefix caching the vLLM way, without the speed: a block is keyed by its parent's key, its
tokens and the extra key; freed blocks keep their key until the LRU free list reuses them."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from kernel_core.contracts.cache import CacheManager, CacheStats


class PrefixDouble(CacheManager):
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._refs = [0] * num_blocks
        self._key_of: dict[int, Hashable] = {}
        self._block_of: dict[Hashable, int] = {}
        self._tables: dict[str, list[int]] = {}
        self._queried = self._hits = 0

    def _keys(self, token_ids: Sequence[int], extra_key: Hashable) -> list[Hashable]:
        keys: list[Hashable] = []
        for start in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            keys.append((keys[-1] if keys else None, tuple(token_ids[start : start + self.block_size]), extra_key))
        return keys

    def match_prefix(self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None) -> int:
        self._queried += len(token_ids)
        table = self._tables.setdefault(request_id, [])
        if not self.enable_prefix_caching:
            return 0
        for key in self._keys(token_ids, extra_key):
            block = self._block_of.get(key)
            if block is None:
                break
            self._free.pop(block, None)
            self._refs[block] += 1
            table.append(block)
        self._hits += len(table) * self.block_size
        return len(table) * self.block_size

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        table = self._tables.setdefault(request_id, [])
        missing = math.ceil(num_tokens / self.block_size) - len(table)
        if missing > len(self._free):
            return False
        for _ in range(missing):
            block, _ = self._free.popitem(last=False)
            if block in self._key_of:
                del self._block_of[self._key_of.pop(block)]
            self._refs[block] = 1
            table.append(block)
        return True

    def commit(self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None) -> None:
        if not self.enable_prefix_caching:
            return
        for block, key in zip(self._tables.get(request_id, []), self._keys(token_ids, extra_key)):
            if block not in self._key_of and key not in self._block_of:
                self._key_of[block], self._block_of[key] = key, block

    def free(self, request_id: str) -> None:
        for block in reversed(self._tables.pop(request_id, [])):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None

    def block_table(self, request_id: str) -> list[int]:
        return list(self._tables.get(request_id, []))

    def stats(self) -> CacheStats:
        return CacheStats(self.num_blocks, len(self._free), self._queried, self._hits)
