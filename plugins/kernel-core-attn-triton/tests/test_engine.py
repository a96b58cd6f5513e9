"""End to end once: an engine whose attention runs on the Triton backend gives the greedy tokens of
the same engine on the torch backend (float32, a tiny random Llama with grouped KV heads; on the
CPU the kernel runs in Triton's interpreter). A token budget of 16 makes steps mix a chunked
prefill with decodes. The engine is built on the torch backend whose ``forward`` is then routed to
the Triton one (same cache layout): on the CPU the engine refuses to select a backend whose record
leaves the CPU out."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.contracts.settings import instantiate
from kernel_core.llm import LLM
from kernel_core_attn_torch.backend import TorchAttention
from kernel_core_attn_triton.backend import TritonAttention
from kernel_core_sdk.conformance.serving import PROMPTS, save_tiny_model, tokens

ENGINE = dict(attention_backend="torch", num_kv_blocks=32, block_size=16, max_num_batched_tokens=16)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("attn-triton-engine") / "base")


def test_engine_on_the_triton_backend_matches_the_torch_backend(
    base: Path, launches: list[tuple[int, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts, names = list(PROMPTS), [None] * len(PROMPTS)
    expected = tokens(LLM(str(base), **ENGINE), prompts, names)
    assert not launches
    triton = instantiate(TritonAttention, plugin="attention-backend.triton")
    monkeypatch.setattr(TorchAttention, "forward", lambda self, *args: triton.forward(*args))
    assert tokens(LLM(str(base), **ENGINE), prompts, names) == expected
    assert launches  # the Triton kernel did run
