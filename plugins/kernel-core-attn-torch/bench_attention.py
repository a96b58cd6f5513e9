"""Time one layer of the torch attention backend on the engine's typical steps, against a naive
loop over requests (the SDK template's way). Not a test: run it by hand.

    python plugins/kernel-core-attn-torch/bench_attention.py [--layers 30] [--rounds 7] [--threads N]

SmolLM2-135M shapes (9 query heads, 3 KV heads, head size 64), block size 16, float32. Each step
runs ``--layers`` layers, each on its own cache as in a model, sharing the step's metadata; the
time per layer includes the per-step planning spread over those layers. Reports the fastest and
the median round: on a shared machine the fastest is the one least disturbed by neighbours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core_attn_torch.backend import TorchAttention

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 16

#: Case name → requests as (tokens already cached, new tokens).
Case = list[tuple[int, int]]


def cases(generator: torch.Generator) -> dict[str, Case]:
    contexts = torch.randint(30, 701, (64,), generator=generator).tolist()
    decode = [(c - 1, 1) for c in contexts]
    return {
        "decode-64": decode,
        "prefill-512": [(0, 512)],
        "mix-64+chunk-448": [*decode, (200, 448)],
    }


class Step:
    """One step's inputs and ``layers`` caches whose blocks are scattered as a busy pool's."""

    def __init__(self, case: Case, layers: int, generator: torch.Generator) -> None:
        needed = [math.ceil((cached + new) / BLOCK_SIZE) for cached, new in case]
        new_tokens = [new for _, new in case]
        num_blocks = sum(needed)
        pool = torch.randperm(num_blocks, generator=generator).tolist()
        tables, slots = [], []
        for (cached, new), count in zip(case, needed):
            table, pool = pool[:count], pool[count:]
            tables.append(table + [0] * (max(needed) - count))
            slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(cached, cached + new)]
        self.tensors = dict(
            slot_mapping=torch.tensor(slots),
            query_start_loc=torch.tensor([0, *itertools.accumulate(new_tokens)], dtype=torch.int32),
            seq_lens=torch.tensor([cached + new for cached, new in case], dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
        )
        shape = AttentionBackend.kv_cache_shape(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
        self.caches = [torch.randn(shape, generator=generator) for _ in range(layers)]
        tokens = len(slots)
        self.query = torch.randn(tokens, NUM_HEADS, HEAD_SIZE, generator=generator)
        self.key = torch.randn(tokens, NUM_KV_HEADS, HEAD_SIZE, generator=generator)
        self.value = torch.randn(tokens, NUM_KV_HEADS, HEAD_SIZE, generator=generator)

    def metadata(self) -> AttentionMetadata:
        """Fresh metadata, with empty scratch, as the runner builds once per step."""
        return AttentionMetadata(**self.tensors, block_size=BLOCK_SIZE, scale=HEAD_SIZE**-0.5)


def naive_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """The per-request loop the batched backend replaces: gather, repeat KV heads, SDPA."""
    keys = kv_cache[0].view(-1, NUM_KV_HEADS, HEAD_SIZE)
    values = kv_cache[1].view(-1, NUM_KV_HEADS, HEAD_SIZE)
    keys.index_copy_(0, metadata.slot_mapping, key)
    values.index_copy_(0, metadata.slot_mapping, value)
    group = NUM_HEADS // NUM_KV_HEADS
    offsets = torch.arange(BLOCK_SIZE)
    out = torch.empty_like(query)
    start = 0
    for i, (seq_len, new) in enumerate(zip(metadata.seq_lens_host, metadata.query_lens_host)):
        blocks = metadata.block_tables[i, : math.ceil(seq_len / BLOCK_SIZE)].long()
        slots = (blocks[:, None] * BLOCK_SIZE + offsets).flatten()[:seq_len]
        k = keys[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        v = values[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        causal = torch.ones(new, seq_len, dtype=torch.bool).tril(seq_len - new)
        rows = slice(start, start + new)
        out[rows] = F.scaled_dot_product_attention(
            query[rows].transpose(0, 1), k, v, attn_mask=causal, scale=metadata.scale
        ).transpose(0, 1)
        start += new
    return out


def ms_per_layer(forward: Callable[..., torch.Tensor], step: Step) -> float:
    """Milliseconds per layer of one step through every layer."""
    metadata = step.metadata()
    began = time.perf_counter()
    for cache in step.caches:
        forward(step.query, step.key, step.value, cache, metadata)
    return (time.perf_counter() - began) * 1e3 / len(step.caches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    backend = TorchAttention()
    results = {}
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, ms per layer (fastest / median round)")
    for name, case in cases(generator).items():
        step = Step(case, args.layers, generator)
        ms_per_layer(backend.forward, step), ms_per_layer(naive_forward, step)  # warm up
        batched, naive = [], []
        for _ in range(args.rounds):  # alternate, so that both see the same neighbours
            batched.append(ms_per_layer(backend.forward, step))
            naive.append(ms_per_layer(naive_forward, step))
        results[name] = {
            "batched_ms": round(min(batched), 3),
            "batched_median_ms": round(statistics.median(batched), 3),
            "naive_ms": round(min(naive), 3),
            "naive_median_ms": round(statistics.median(naive), 3),
            "speedup": round(min(naive) / min(batched), 2),
        }
        r = results[name]
        print(
            f"{name:18} batched {r['batched_ms']:7.3f} / {r['batched_median_ms']:7.3f}   "
            f"naive {r['naive_ms']:7.3f} / {r['naive_median_ms']:7.3f}   x{r['speedup']}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
