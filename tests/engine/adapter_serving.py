"""What the engine's adapter-serving tests share: the prompts, an engine with adapters loaded, the
interleaved workload, HF PEFT's greedy tokens per (adapter, prompt) and the checks on them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.llm import LLM
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import Oracle

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
PROMPTS = [
    "Hello, my name is",
    "The capital of France is a city with many museums and old streets, where",
    "Once upon a time, in a kingdom by the sea, there lived a princess who loved to read books about "
    "stars, ships and the people who sailed them across the",
]


class Expected:
    """HF PEFT's greedy tokens per (adapter or None, prompt), computed once each: through
    ``generate``, or with ``by_forward`` a loop of whole-sequence forwards (see
    :meth:`Oracle.greedy_by_forward`)."""

    def __init__(self, base: Path, adapters: dict[str, Path], by_forward: bool = False) -> None:
        from transformers import AutoTokenizer

        self.oracle, self.adapters, self.by_forward = Oracle(base), adapters, by_forward
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self._tokens: dict[tuple[Path | None, str], list[int]] = {}

    def model(self, adapter: str | None) -> Any:
        return self.oracle.model(self.adapters[adapter] if adapter else None)

    def __call__(self, adapter: str | None, prompt: str, folder: Path | None = None) -> list[int]:
        folder = folder or (self.adapters[adapter] if adapter else None)
        if (folder, prompt) not in self._tokens:
            ids = self.tokenizer(prompt)["input_ids"]
            greedy = self.oracle.greedy_by_forward if self.by_forward else self.oracle.generate
            self._tokens[folder, prompt] = greedy(folder, ids, MAX_TOKENS)
        return self._tokens[folder, prompt]


def make_llm(base: Path, adapters: dict[str, Path], **config: Any) -> LLM:
    """An engine for ``base`` (LoRA ranks up to 32, 256 KV blocks unless ``config`` says) with ``adapters`` loaded."""
    llm = LLM(str(base), **{"enable_lora": True, "max_lora_rank": 32, "num_kv_blocks": 256, **config})
    for name, folder in adapters.items():
        llm.load_adapter(name, folder)
    return llm


def workload(names: Sequence[str | None]) -> tuple[list[str], list[str | None]]:
    """Each of ``names`` (None: the base model) on two prompts, interleaved."""
    prompts, rows = [], []
    for i, name in enumerate(names):
        for j in (i, i + 1):
            prompts.append(PROMPTS[j % len(PROMPTS)])
            rows.append(name)
    return prompts, rows


def assert_equal_to_peft(outputs: list[RequestOutput], prompts: list[str], names: list[str | None], expected: Expected) -> None:
    got = [list(o.outputs[0].token_ids) for o in outputs]
    want = [expected(name, prompt) for prompt, name in zip(prompts, names)]
    mismatches = [(i, names[i]) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not mismatches, f"rows differing from HF PEFT (row, adapter): {mismatches}"


def assert_idle(engine: LLMEngine) -> None:
    """The KV pool full again but for the blocks adapters pin, every slot unheld, no adapter counted as used."""
    stats = engine.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks - engine.pinned_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.adapters.slots.holders == [0] * len(engine.adapters.slots.holders)
    assert all(info.num_requests == 0 for info in engine.list_adapters())


def assert_each_changes_the_output(expected: Expected, names: Sequence[str]) -> None:
    """The oracle is not vacuous: each adapter moves its greedy tokens away from the base model's on some prompt."""
    for name in names:
        assert any(expected(name, p) != expected(None, p) for p in PROMPTS), name
