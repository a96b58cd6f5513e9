"""Reference counts, free lists and the hash index of a fixed pool of KV blocks."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable


class BlockPool:
    """``num_blocks`` blocks, each free (reference count 0) or held by one or more requests.

    A free block sits in one of two lists. *Uncached* blocks hold nothing anyone can match.
    *Evictable* blocks still hold a cached full block's KV, keyed by its hash, and are ordered
    least recently freed first. Fresh blocks come from the uncached list first, so cached KV is
    overwritten only when nothing else is left, and then the least recently freed first.
    Every operation is O(1) per block.
    """

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        #: Hash of the cached full block a block holds, None when it holds none.
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        self._block_by_hash: dict[bytes, int] = {}
        self._uncached: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free(self) -> int:
        """Blocks no request holds, whether or not they still hold cached KV."""
        return len(self._uncached) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks a prefix match can find, held or free."""
        return len(self._block_by_hash)

    def lookup(self, block_hash: bytes) -> int | None:
        """The block holding the KV named ``block_hash``, if any."""
        return self._block_by_hash.get(block_hash)

    def take(self, count: int) -> list[int]:
        """Hand out ``count`` free blocks with reference count 1; the caller checks ``num_free``.

        Evicts (forgets the hash of) the least recently freed cached blocks once the uncached
        ones run out.
        """
        if count > self.num_free:
            raise ValueError(f"asked for {count} blocks, {self.num_free} are free")
        blocks = []
        for _ in range(count):
            if self._uncached:
                block = self._uncached.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_by_hash[self.block_hashes[block]]  # type: ignore[arg-type]
                self.block_hashes[block] = None
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def share(self, block: int) -> None:
        """Add a holder to a cached block, reviving it from the evictable list if it was free."""
        if self.ref_counts[block] == 0:
            del self._evictable[block]
        self.ref_counts[block] += 1

    def release(self, blocks: Iterable[int]) -> None:
        """Drop one holder of each block; blocks left without holders are freed in the order given,
        so the first given is evicted first among them."""
        ref_counts = self.ref_counts
        for block in blocks:
            ref_counts[block] -= 1
            if ref_counts[block] == 0:
                if self.block_hashes[block] is None:
                    self._uncached.append(block)
                else:
                    self._evictable[block] = None

    def register(self, block: int, block_hash: bytes) -> bool:
        """Make a held, uncached block findable by ``block_hash``.

        Returns False, changing nothing, when another block already holds that hash: the caller
        keeps its own copy (swapping blocks under a running request would move its KV) and the
        index keeps one block per hash.
        """
        if block_hash in self._block_by_hash:
            return False
        self._block_by_hash[block_hash] = block
        self.block_hashes[block] = block_hash
        return True

    def reset_prefix_cache(self) -> int:
        """Forget the hashes of every free cached block; returns how many were forgotten.

        Blocks held by requests keep theirs, and become evictable when freed.
        """
        dropped = len(self._evictable)
        for block in self._evictable:
            del self._block_by_hash[self.block_hashes[block]]  # type: ignore[arg-type]
            self.block_hashes[block] = None
            self._uncached.append(block)
        self._evictable.clear()
        return dropped

    def check_invariants(self, holders: list[int]) -> None:
        """Raise AssertionError unless the pool agrees with itself and with ``holders``
        (how many live tables hold each block). O(num_blocks): for tests and debugging."""
        assert self.ref_counts == holders, "reference counts must equal the tables holding each block"
        uncached, evictable = list(self._uncached), list(self._evictable)
        free = set(uncached) | set(evictable)
        assert len(free) == len(uncached) + len(evictable), "a block is twice in the free lists"
        assert free == {b for b, n in enumerate(self.ref_counts) if n == 0}, "free lists != unheld blocks"
        assert all(self.block_hashes[b] is None for b in uncached), "an uncached free block has a hash"
        assert all(self.block_hashes[b] is not None for b in evictable), "an evictable block has no hash"
        assert all(h is not None for b, h in enumerate(self.block_hashes) if self.ref_counts[b] > 1), (
            "a block is shared without a hash: sharing happens only through a prefix match"
        )
        assert self._block_by_hash == {h: b for b, h in enumerate(self.block_hashes) if h is not None}, (
            "the hash index must map each cached hash to the one block holding it"
        )
