"""The paged cache manager: per-request block tables over a shared, prefix-caching block pool."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from kernel_core.contracts.cache import CacheManager, CacheStats
from kernel_core_paged_kv.block_pool import BlockPool
from kernel_core_paged_kv.hashing import BlockHasher, root_hash


class _Request:
    """A request's blocks, and how far its chain of block hashes has been computed."""

    __slots__ = ("table", "num_hashed", "last_hash")

    def __init__(self) -> None:
        self.table: list[int] = []
        #: Leading blocks of ``table`` whose hash is known (matched or committed).
        self.num_hashed = 0
        #: Hash of block ``num_hashed - 1``; meaningless while ``num_hashed`` is 0.
        self.last_hash = b""


class PagedCacheManager(CacheManager):
    """vLLM V1-style KV block bookkeeping with prefix caching.

    Full blocks are named by a chained hash (see :mod:`kernel_core_paged_kv.hashing`) once
    ``commit`` says their KV is computed; a later request whose prompt starts with the same full
    blocks, under the same ``extra_key``, attaches them instead of recomputing. Freed cached
    blocks stay matchable until the pool needs them (least recently freed first).

    ``allocate`` and ``commit`` are called for every running request every step, so both cost
    O(new blocks): each request remembers how many of its blocks are hashed and the last hash.
    The ``extra_key`` given to ``commit`` must be the one given to ``match_prefix``; it is read
    only while the request's first block is hashed, later blocks extend the chain.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self._pool = BlockPool(num_blocks)
        self._hash_block = BlockHasher(block_size)
        self._requests: dict[str, _Request] = {}
        self._queried_tokens = 0
        self._hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks ``allocate`` can hand out now, cached-but-unheld ones included."""
        return self._pool.num_free

    @property
    def num_cached_blocks(self) -> int:
        """Full blocks a prefix match can find now, held or free."""
        return self._pool.num_cached

    def match_prefix(self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None) -> int:
        """Attach the cached blocks of the longest full-block prefix of ``token_ids``.

        The engine passes the prompt less its last token, so at least one token is computed.
        Raises ValueError for a request that already holds blocks (free it first).
        """
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} already holds blocks; free it before matching again")
        self._queried_tokens += len(token_ids)
        if not self.enable_prefix_caching:
            return 0
        table: list[int] = []
        parent = root_hash(extra_key)
        for index in range(len(token_ids) // self.block_size):
            block_hash = self._hash_block(parent, token_ids, index)
            block = self._pool.lookup(block_hash)
            if block is None:
                break
            self._pool.share(block)
            table.append(block)
            parent = block_hash
        if table:
            request = self._requests[request_id] = _Request()
            request.table, request.num_hashed, request.last_hash = table, len(table), parent
        hit = len(table) * self.block_size
        self._hit_tokens += hit
        return hit

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        request = self._requests.get(request_id)
        missing = -(-num_tokens // self.block_size) - (len(request.table) if request else 0)
        if missing <= 0:
            return True
        if missing > self._pool.num_free:
            return False
        if request is None:
            request = self._requests[request_id] = _Request()
        request.table += self._pool.take(missing)
        return True

    def commit(self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None) -> None:
        """Hash the request's newly full blocks and make them matchable.

        Blocks beyond the request's table are ignored. When another block already holds the
        same hash, the request keeps its own copy and the index keeps the other one.
        """
        request = self._requests.get(request_id)
        if request is None or not self.enable_prefix_caching:
            return
        num_full = min(len(token_ids) // self.block_size, len(request.table))
        if num_full <= request.num_hashed:
            return
        parent = request.last_hash if request.num_hashed else root_hash(extra_key)
        for index in range(request.num_hashed, num_full):
            parent = self._hash_block(parent, token_ids, index)
            self._pool.register(request.table[index], parent)
        request.num_hashed, request.last_hash = num_full, parent

    def free(self, request_id: str) -> None:
        """Return the request's blocks; the tail is freed first so that it is evicted first,
        keeping the shared head of a sequence cached longest."""
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._pool.release(reversed(request.table))

    def block_table(self, request_id: str) -> list[int]:
        request = self._requests.get(request_id)
        return list(request.table) if request else []

    def stats(self) -> CacheStats:
        """Pool usage; prefix queries and hits count tokens, not blocks."""
        return CacheStats(
            num_blocks=self.num_blocks,
            num_free_blocks=self._pool.num_free,
            prefix_queries=self._queried_tokens,
            prefix_hits=self._hit_tokens,
        )

    def reset_prefix_cache(self) -> int:
        """Forget every cached block no request holds; returns how many were forgotten.

        Blocks of running requests stay cached. To invalidate everything (new weights under an
        unchanged adapter id), call it when no request runs, or change the ``extra_key``.
        """
        return self._pool.reset_prefix_cache()

    def check_invariants(self) -> None:
        """Raise AssertionError unless tables, reference counts, free lists and hash index agree.

        O(num_blocks + held blocks): for tests and debugging, not for the engine's step loop.
        """
        holders = [0] * self.num_blocks
        for request_id, request in self._requests.items():
            assert request.table, f"{request_id}: a request without blocks must not be tracked"
            assert len(set(request.table)) == len(request.table), f"{request_id} holds a block twice"
            assert 0 <= request.num_hashed <= len(request.table), f"{request_id}: hashed past its table"
            for block in request.table:
                holders[block] += 1
        self._pool.check_invariants(holders)
