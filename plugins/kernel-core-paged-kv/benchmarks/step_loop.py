"""Micro-benchmark: the manager's cost per request per engine step.

Simulates the engine's use: 64 running requests sharing a system prompt, each matched once,
then every step ``allocate`` (growth by one token) and ``commit`` per request, and ``free``
when it finishes. Prints request-steps per second (one allocate + one commit, free amortised).

    python benchmarks/step_loop.py [--requests 64] [--prompt 512] [--decode 512] [--block-size 16]
"""

from __future__ import annotations

import argparse
import random
import time

from kernel_core_paged_kv.manager import PagedCacheManager


def run(num_requests: int, prompt_len: int, decode_len: int, block_size: int, slice_tokens: bool) -> float:
    """Request-steps per second over one full batch lifetime."""
    rng = random.Random(0)
    blocks_per_request = -(-(prompt_len + decode_len) // block_size)
    manager = PagedCacheManager(num_requests * blocks_per_request + 1, block_size)
    system = [rng.randrange(32000) for _ in range(prompt_len // 2)]
    sequences = {
        f"r{i}": system + [rng.randrange(32000) for _ in range(prompt_len - len(system))]
        for i in range(num_requests)
    }
    for request_id, tokens in sequences.items():
        manager.match_prefix(request_id, tokens[:-1])
        assert manager.allocate(request_id, len(tokens))
        manager.commit(request_id, tokens)
    start = time.perf_counter()
    for _ in range(decode_len):
        for request_id, tokens in sequences.items():
            tokens.append(1)
            assert manager.allocate(request_id, len(tokens))
            manager.commit(request_id, tokens[:] if slice_tokens else tokens)
    for request_id in sequences:
        manager.free(request_id)
    elapsed = time.perf_counter() - start
    assert manager.num_free_blocks == manager.num_blocks
    return num_requests * decode_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args()
    for slice_tokens in (False, True):
        rate = run(args.requests, args.prompt, args.decode, args.block_size, slice_tokens)
        how = "commit(tokens[:computed]) copy" if slice_tokens else "commit(tokens) no copy"
        print(f"{how:32s} {rate:12,.0f} request-steps/s  ({1e6 / rate:.2f} us each)")


if __name__ == "__main__":
    main()
