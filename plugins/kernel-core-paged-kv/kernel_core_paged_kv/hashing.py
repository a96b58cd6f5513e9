"""Chained hashes that name full KV blocks by everything their KV depends on.

A block's KV depends on its own tokens and on every token before it, and on anything else that
changes the model's activations (the adapter, image embeddings): the ``extra_key``. So block
``i`` is named ``sha256(hash(block i-1) + tokens of block i)``, and the chain starts from a root
derived from ``extra_key``.

Why SHA-256 rather than Python's ``hash`` of tuples: ``hash`` of small ints is the int itself and
tuple hashing is not collision resistant, so a crafted prompt could be made to collide with
another user's prefix and be served its KV (vLLM moved to SHA-256 for this reason, advisory
GHSA-rm76-4mrf-v9r8). SHA-256 is also the same in every process and on every machine
(``hash`` depends on ``PYTHONHASHSEED``), which a shared or persisted cache would need.
It costs about a microsecond per block, paid once per block, never per step.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Sequence
from hashlib import sha256

#: Versions the encoding: bump it when the bytes hashed for a block change.
_ROOT_PREFIX = b"kernel-core-paged-kv/1\x00"


def root_hash(extra_key: Hashable) -> bytes:
    """Parent of a sequence's first block.

    ``extra_key`` is encoded by its ``repr``, which distinguishes ``None``, ``1`` and ``"1"``
    and is stable for the keys the engine uses (None, str, int, bytes, tuples of them). A key
    whose ``repr`` holds an object address would never match another request, safely.
    """
    return sha256(_ROOT_PREFIX + repr(extra_key).encode()).digest()


class BlockHasher:
    """Hashes block ``index`` of a token sequence, given the hash of the block before it."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        # Fixed-width little-endian int64s: a compact encoding, the same on every machine.
        self._pack = struct.Struct(f"<{block_size}q").pack

    def __call__(self, parent: bytes, token_ids: Sequence[int], index: int) -> bytes:
        start = index * self.block_size
        return sha256(parent + self._pack(*token_ids[start : start + self.block_size])).digest()
