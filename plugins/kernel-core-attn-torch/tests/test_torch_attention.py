"""The torch attention backend: the SDK's conformance suite, then SmolLM2-shaped steps checked
against dense attention over each request's own history of keys and values."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

from kernel_core.contracts.attention import AttentionMetadata
from kernel_core_attn_torch import plugin
from kernel_core_attn_torch.backend import TorchAttention, TorchAttentionSettings
from kernel_core_attn_torch.plan import step_plan
from kernel_core_sdk.conformance import AttentionBackendConformance

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 16  # SmolLM2-135M
SCALE = HEAD_SIZE**-0.5


class TestTorchAttentionConformance(AttentionBackendConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


class Batch:
    """Requests on scattered cache blocks, with every key and value they wrote kept aside, so
    that the expected output never reads the cache under test."""

    def __init__(self, totals: list[int], generator: torch.Generator, fill: float = 0.0) -> None:
        num_blocks = sum(math.ceil(t / BLOCK_SIZE) for t in totals) + 2
        pool = torch.randperm(num_blocks, generator=generator).tolist()
        self.tables = []
        for total in totals:
            count = math.ceil(total / BLOCK_SIZE)
            self.tables.append(pool[:count])
            pool = pool[count:]
        shape = TorchAttention.kv_cache_shape(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
        self.cache = torch.full(shape, fill)
        #: Per request, the keys and values of each step: [tokens, 2, kv_heads, head].
        self.history: list[list[torch.Tensor]] = [[] for _ in totals]
        self.generator = generator

    def step(self, backend: TorchAttention, new_tokens: dict[int, int], num_layers: int = 1) -> None:
        """Run one step of ``new_tokens`` (request → tokens) through ``num_layers`` layers sharing
        the cache and metadata, and check each layer's output."""
        requests = list(new_tokens)
        cached = [sum(len(h) for h in self.history[i]) for i in requests]
        metadata = self.metadata(requests, cached, [new_tokens[i] for i in requests])
        total = sum(new_tokens.values())
        qkv = torch.randn(total, NUM_HEADS + 2 * NUM_KV_HEADS, HEAD_SIZE, generator=self.generator)
        # Strided views of one projection, as a runner passes them.
        query, key, value = qkv.split([NUM_HEADS, NUM_KV_HEADS, NUM_KV_HEADS], dim=1)
        for _ in range(num_layers):
            out = backend.forward(query, key, value, self.cache, metadata)
            assert out.shape == query.shape and out.dtype == query.dtype
            start = 0
            for i in requests:
                rows = slice(start, start + new_tokens[i])
                context = torch.cat([*self.history[i], torch.stack([key[rows], value[rows]], dim=1)])
                expected = dense_attention(query[rows], context)
                torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=0)
                start += new_tokens[i]
        start = 0
        for i in requests:
            rows = slice(start, start + new_tokens[i])
            self.history[i].append(torch.stack([key[rows], value[rows]], dim=1))
            start += new_tokens[i]

    def metadata(self, requests: list[int], cached: list[int], new: list[int]) -> AttentionMetadata:
        slots = [
            self.tables[i][pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
            for i, c, n in zip(requests, cached, new)
            for pos in range(c, c + n)
        ]
        width = max(len(self.tables[i]) for i in requests)
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots),
            query_start_loc=torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32),
            seq_lens=torch.tensor([c + n for c, n in zip(cached, new)], dtype=torch.int32),
            block_tables=torch.tensor(
                [self.tables[i] + [0] * (width - len(self.tables[i])) for i in requests], dtype=torch.int32
            ),
            block_size=BLOCK_SIZE,
            scale=SCALE,
        )


def dense_attention(query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Causal attention in float64 of ``query`` ``[new, heads, head]``, the last ``new`` positions
    of ``context`` ``[positions, 2, kv_heads, head]``; query head h reads KV head h // group."""
    group = NUM_HEADS // NUM_KV_HEADS
    keys = context[:, 0].double().repeat_interleave(group, dim=1)
    values = context[:, 1].double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query.double(), keys) * SCALE
    new, positions = len(query), len(context)
    future = torch.arange(positions)[None, :] > torch.arange(positions - new, positions)[:, None]
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, values).float()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_mixed_steps_of_a_smollm2_layer(generator: torch.Generator) -> None:
    """Fresh prompts, a chunked prompt continuing its cached context, one-token prompts and
    decodes, mixed in each step, over several layers sharing the step's metadata."""
    batch = Batch([41, 52, 3, 19, 70], generator)
    backend = TorchAttention()
    batch.step(backend, {0: 40, 1: 20, 2: 1}, num_layers=3)
    batch.step(backend, {0: 1, 1: 30, 2: 1, 3: 17, 4: 33}, num_layers=3)
    batch.step(backend, {4: 36, 0: 1, 1: 1, 2: 1, 3: 1}, num_layers=3)
    batch.step(backend, {3: 1, 2: 1, 4: 1, 1: 1}, num_layers=3)


def test_many_decodes_across_buckets(generator: torch.Generator) -> None:
    """Decode requests of contexts 30-700 cut into several buckets, a prefill among them."""
    lengths = torch.randint(30, 701, (24,), generator=generator).tolist()
    batch = Batch([n + 1 for n in lengths] + [80], generator)
    backend = TorchAttention(TorchAttentionSettings(bucket_bytes=64 * 1024))
    batch.step(backend, {i: n for i, n in enumerate(lengths)})
    batch.step(backend, {**{i: 1 for i in range(len(lengths))}, len(lengths): 80}, num_layers=2)
    metadata = batch.metadata(list(range(24)), lengths, [1] * 24)
    plan = step_plan(metadata, NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, torch.float32, bucket_bytes=64 * 1024)
    assert len(plan.decode) > 3


def test_unwritten_slots_cannot_poison_the_output(generator: torch.Generator) -> None:
    """A cache allocated with torch.empty may hold NaN: padding and masks must never read it."""
    batch = Batch([6, 37, 3], generator, fill=float("nan"))
    backend = TorchAttention(TorchAttentionSettings(bucket_bytes=1))  # every decode alone in its bucket, then all together
    batch.step(backend, {0: 4, 1: 20, 2: 1})
    batch.step(backend, {0: 1, 1: 17, 2: 1})
    batch.step(TorchAttention(), {2: 1, 0: 1})


def test_buckets_sort_by_context_and_respect_the_cap(generator: torch.Generator) -> None:
    lengths = [300, 20, 700, 40, 310, 35]
    batch = Batch(lengths, generator)
    metadata = batch.metadata(list(range(6)), [n - 1 for n in lengths], [1] * 6)
    row_bytes = NUM_KV_HEADS * HEAD_SIZE * 4
    plan = step_plan(metadata, NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, torch.float32, bucket_bytes=700 * row_bytes)
    assert [bucket.width for bucket in plan.decode] == [40, 310, 700]
    assert [len(bucket.rows) for bucket in plan.decode] == [3, 2, 1]
    assert all(len(b.rows) * b.width <= 700 for b in plan.decode)


def test_plan_is_built_once_per_step_and_layer_shape(generator: torch.Generator) -> None:
    batch = Batch([10, 20], generator)
    metadata = batch.metadata([0, 1], [9, 0], [1, 20])
    plan = step_plan(metadata, NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, torch.float32)
    assert step_plan(metadata, NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, torch.float32) is plan
    assert step_plan(metadata, NUM_HEADS, 1, HEAD_SIZE, torch.float32) is not plan
