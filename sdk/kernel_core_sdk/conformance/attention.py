"""Conformance suite for attention backends."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.records import AttentionBackendSpec, PluginKind
from kernel_core.engine.components import check_sliding_window_support
from kernel_core.errors import KernelCoreError
from kernel_core_sdk.conformance._paged import scattered_block_tables, step_metadata
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.conformance._reference import paged_attention

#: Steps of each scenario: request index → tokens it computes in that step. A decode step for
#: every request follows, reading all that the earlier steps wrote.
SCENARIOS: dict[str, list[dict[int, int]]] = {
    "prefill-only": [{0: 5, 1: 1, 2: 8}],
    "decode-only": [{0: 4, 1: 9, 2: 1}, {0: 1, 1: 1, 2: 1}],
    "mixed": [{1: 9, 2: 6, 3: 3}, {0: 5, 1: 1, 2: 3, 3: 4}],
    "chunked-long": [{0: 11, 1: 2}, {0: 6, 1: 9}, {0: 4, 1: 1}],
}
#: Sliding windows (plugin API 1.3), all shorter than some context of every scenario but
#: prefill-only's shortest: 1 (a token sees itself only), and windows cutting chunks and blocks.
WINDOWS = (1, 3, 6)
#: (query heads, KV heads).
HEADS: dict[str, tuple[int, int]] = {"mha": (4, 4), "gqa-group2": (4, 2), "gqa-group3": (6, 2)}
HEAD_SIZE = 16
SCALE = 0.3  # not head_size ** -0.5, so a backend ignoring metadata.scale fails


@dataclass
class Step:
    """One step's inputs, the backend's output and cache before/after, and the reference output."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    metadata: AttentionMetadata
    output: torch.Tensor
    expected: torch.Tensor
    cache_before: torch.Tensor
    cache_after: torch.Tensor


class AttentionBackendConformance(PluginUnderTest):
    """Subclass as ``TestMyBackend(AttentionBackendConformance)`` to check an attention backend.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the backend's record name, when the module registers several.

    Fixtures you may override:

    - ``attention_backend``: the instance under test; defaults to the class called with no
      arguments.
    - ``device``: where the backend runs (default CPU); the suite skips when the record's
      ``device_types`` exclude it. The reference always runs on the CPU in float64.

    Outputs must match a dense causal reference within 1e-5 in float32, for batches mixing
    requests with different cached prefixes, across prefill, decode and chunked steps; and, for a
    backend declaring ``supports_sliding_window``, with ``metadata.sliding_window`` set too. A
    backend that does not declare it is shown to be refused instead: the engine never hands it
    a model with sliding-window layers (``check_sliding_window_support``).
    """

    kind = PluginKind.ATTENTION_BACKEND
    contract = AttentionBackend

    @pytest.fixture
    def attention_backend(
        self,
        construct: Callable[..., AttentionBackend],
        plugin_spec: AttentionBackendSpec,
        device: torch.device,
        device_types: frozenset[str],
    ) -> AttentionBackend:
        if device.type not in device_types:
            pytest.skip(f"{plugin_spec.name!r} does not run on {device.type} ({sorted(device_types)})")
        return construct()

    @pytest.mark.parametrize("block_size", [4, 16], ids=lambda size: f"block{size}")
    @pytest.mark.parametrize("heads", sorted(HEADS))
    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_matches_dense_reference(
        self, attention_backend: AttentionBackend, device: torch.device, scenario: str, heads: str, block_size: int
    ) -> None:
        for number, step in enumerate(run_steps(attention_backend, device, SCENARIOS[scenario], heads, block_size)):
            assert step.output.shape == step.query.shape and step.output.dtype == step.query.dtype
            worst = (step.output.cpu() - step.expected).abs().max().item()
            assert worst <= 1e-5, f"step {number}: output differs from the dense reference by up to {worst:.2e}"

    @pytest.mark.parametrize("window", WINDOWS, ids=lambda window: f"window{window}")
    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_sliding_window_matches_reference_or_is_refused(
        self, attention_backend: AttentionBackend, device: torch.device, scenario: str, window: int
    ) -> None:
        if not attention_backend.supports_sliding_window:
            with pytest.raises(KernelCoreError, match="does not support sliding windows"):
                check_sliding_window_support(_WindowedModel(window), attention_backend, "under-test")
            return
        steps = run_steps(attention_backend, device, SCENARIOS[scenario], "gqa-group2", block_size=4, window=window)
        for number, step in enumerate(steps):
            assert step.metadata.sliding_window == window
            worst = (step.output.cpu() - step.expected).abs().max().item()
            assert worst <= 1e-5, f"step {number}: output differs from the windowed reference by up to {worst:.2e}"

    @pytest.mark.parametrize("heads", sorted(HEADS))
    def test_writes_new_kv_to_their_slots(
        self, attention_backend: AttentionBackend, device: torch.device, heads: str
    ) -> None:
        num_kv_heads = HEADS[heads][1]
        layout = (8, 4, num_kv_heads, HEAD_SIZE)
        if attention_backend.kv_cache_shape(*layout) != AttentionBackend.kv_cache_shape(*layout):
            pytest.skip("private cache layout: the decode steps of the reference test check the writes")
        for step in run_steps(attention_backend, device, SCENARIOS["mixed"], heads, block_size=4):
            expected = step.cache_before.clone()
            slots = expected.view(2, -1, num_kv_heads, HEAD_SIZE)
            slots[0, step.metadata.slot_mapping] = step.key
            slots[1, step.metadata.slot_mapping] = step.value
            torch.testing.assert_close(
                step.cache_after, expected, rtol=0, atol=0, equal_nan=True,
                msg="only the slots in slot_mapping may change",
            )


class _WindowedModel:
    """What the engine's check reads of a model with sliding-window layers."""

    def __init__(self, window: int) -> None:
        self.sliding_windows = frozenset({window})


def run_steps(
    backend: AttentionBackend,
    device: torch.device,
    steps: list[dict[int, int]],
    heads: str,
    block_size: int,
    window: int | None = None,
) -> Iterator[Step]:
    """Run ``steps`` (then a decode step for every request) through ``backend`` and the reference,
    each on its own cache, starting as NaN: a backend that reads a slot it was not given (even
    under a mask, where 0 * NaN is NaN) fails. ``window`` is the layer's sliding window."""
    generator = torch.Generator().manual_seed(0)
    num_heads, num_kv_heads = HEADS[heads]
    num_requests = 1 + max(max(step) for step in steps)
    steps = [*steps, {i: 1 for i in range(num_requests)}]
    totals = [sum(step.get(i, 0) for step in steps) for i in range(num_requests)]
    num_blocks = sum(math.ceil(total / block_size) for total in totals) + 3  # spare blocks stay untouched
    tables = scattered_block_tables(totals, block_size, num_blocks, generator)
    shape = backend.kv_cache_shape(num_blocks, block_size, num_kv_heads, HEAD_SIZE)
    cache = torch.full(shape, float("nan"), device=device)
    reference_cache = torch.full(
        AttentionBackend.kv_cache_shape(num_blocks, block_size, num_kv_heads, HEAD_SIZE), float("nan")
    )
    cached = [0] * num_requests
    for step in steps:
        batch = list(step)
        metadata = step_metadata(
            [tables[i] for i in batch], [cached[i] for i in batch], [step[i] for i in batch], block_size, SCALE, device
        ).for_layer(window)
        num_tokens = sum(step.values())
        query = torch.randn(num_tokens, num_heads, HEAD_SIZE, generator=generator)
        key = torch.randn(num_tokens, num_kv_heads, HEAD_SIZE, generator=generator)
        value = torch.randn(num_tokens, num_kv_heads, HEAD_SIZE, generator=generator)
        inputs = (query.clone(), key.clone(), value.clone())
        before = cache.clone()
        output = backend.forward(query.to(device), key.to(device), value.to(device), cache, metadata)
        for given, kept in zip((query, key, value), inputs):
            assert torch.equal(given, kept), "forward must not modify query, key or value"
        expected = paged_attention(query, key, value, reference_cache, metadata)
        yield Step(query, key.to(device), value.to(device), metadata, output, expected, before, cache.clone())
        for i in batch:
            cached[i] += step[i]
