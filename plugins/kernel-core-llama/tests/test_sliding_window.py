"""Sliding-window attention (Mistral on every layer, Qwen2 on its ``sliding_attention`` layers)
through the engine: greedy tokens equal transformers' ``generate`` with chunked prefill, and a
backend that cannot apply windows is refused naming both it and the model. The logits of whole
prompts, flattened batches, chunked prefill and decode are checked in test_llama.py, whose
configs include these windows."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, PreTrainedConfig, Qwen2Config

import kernel_core
from kernel_core import LLM, SamplingParams
from kernel_core.config import EngineConfig
from kernel_core.contracts.records import AttentionBackendSpec
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import KernelCoreError
from kernel_core.plugins import PluginManager
from kernel_core_sdk.conformance import ReferenceAttentionBackend
from kernel_core_sdk.hf_oracle import hf_greedy, save_servable_model
from kernel_core_sdk.pytest_plugin import TEST_DISTRIBUTION

NEW_TOKENS = 8
PROMPT_LENGTHS = (19, 7, 26)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=True,
)
WINDOWED: dict[str, Callable[..., PreTrainedConfig]] = {
    "mistral-window-5": lambda **ids: MistralConfig(**TINY, **ids, sliding_window=5),
    "qwen2-mixed-window-6": lambda **ids: Qwen2Config(
        **TINY, **ids, use_sliding_window=True, sliding_window=6, layer_types=["sliding_attention", "full_attention"]
    ),
}


class FullAttentionOnly(ReferenceAttentionBackend):
    """A backend that does not apply windows (the contract's default)."""

    supports_sliding_window = False


@pytest.fixture(scope="module", params=sorted(WINDOWED))
def folder(request: pytest.FixtureRequest, embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random windowed model with SmolLM2's tokenizer, so the engine can serve it."""
    return save_servable_model(WINDOWED[request.param], embedded_model, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def prompts(folder: Path) -> list[list[int]]:
    generator = torch.Generator().manual_seed(2)
    vocab = AutoModelForCausalLM.from_pretrained(folder).config.vocab_size
    return [torch.randint(vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def test_engine_greedy_tokens_equal_generate_with_chunked_prefill(folder: Path, prompts: list[list[int]]) -> None:
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = [hf_greedy(hf_model, prompt, NEW_TOKENS) for prompt in prompts]
    # 8 tokens a step: every prompt is prefilled in chunks, beside other requests' decodes.
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=64, block_size=4, max_num_batched_tokens=8)
    assert llm.engine.components.model.sliding_windows
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_backend_without_windows_is_refused_naming_both(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("kc_test_full_attention_only")
    module.kernel_core_api = "1.3"
    module.FullAttentionOnly = FullAttentionOnly
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @kernel_core.hookimpl
    def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
        return [
            AttentionBackendSpec(
                name="full-only", description="no windows", implementation=f"{module.__name__}:FullAttentionOnly"
            )
        ]

    module.kernel_core_attention_backends = kernel_core_attention_backends
    manager = PluginManager.from_environment()
    manager.register(module, name=module.__name__, distribution=TEST_DISTRIBUTION)
    config = EngineConfig(model=str(folder), attention_backend="full-only", num_kv_blocks=8)
    with pytest.raises(KernelCoreError, match=r"LlamaModel model attends within a sliding window \((5|6) tokens\).*'full-only' \(FullAttentionOnly\) does not support sliding windows"):
        LLMEngine(config, manager)
