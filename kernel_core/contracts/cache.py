"""The contract a KV-cache manager plugin implements.

A cache manager does the bookkeeping of the paged KV cache: which fixed-size blocks of the
preallocated KV tensors each request owns, and which blocks already hold a prompt prefix.
It never touches the tensors themselves; the model runner and attention backend do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheStats:
    """Counters for metrics: usage of the pool and prefix-cache hit rate."""

    num_blocks: int
    num_free_blocks: int
    prefix_queries: int
    prefix_hits: int

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests."""
        return 1.0 - self.num_free_blocks / self.num_blocks if self.num_blocks else 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction of queried prompt tokens served from the prefix cache."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


class CacheManager(ABC):
    """Block pool bookkeeping for requests; every method is keyed by request id.

    Invariant checked by the conformance suite: once every request is freed, the pool is
    exactly full again (``stats().num_free_blocks == num_blocks``).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

    @abstractmethod
    def match_prefix(
        self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None
    ) -> int:
        """Attach the cached blocks holding the longest full-block prefix of ``token_ids``.

        Called once when a request is first scheduled. ``extra_key`` (e.g. the adapter id)
        must match for blocks to be shared. Returns how many tokens need no recompute.
        """

    @abstractmethod
    def allocate(self, request_id: str, num_tokens: int) -> bool:
        """Grow the request's block table to hold ``num_tokens`` tokens in all.

        All or nothing: returns False, changing nothing, when the pool is short.
        """

    @abstractmethod
    def commit(self, request_id: str, token_ids: Sequence[int], extra_key: Hashable = None) -> None:
        """Record that the KV of ``token_ids`` (the request's known tokens, a prefix of its
        sequence) is computed, so that its full blocks can serve other requests as a prefix.

        The scheduler calls it right after :meth:`allocate` with the tokens this step will
        compute: within a step every new K/V is written before any attention reads, so a
        request admitted later in the same step may already share those blocks.
        """

    @abstractmethod
    def free(self, request_id: str) -> None:
        """Return every block of the request to the pool; unknown ids are ignored."""

    @abstractmethod
    def block_table(self, request_id: str) -> list[int]:
        """Block ids of the request, in token order."""

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix block no request holds; returns how many were dropped.

        Called when cached KV may be stale, e.g. an adapter was reloaded under the same id.
        """
        return 0

    @abstractmethod
    def stats(self) -> CacheStats:
        """Pool usage and prefix-cache counters."""
