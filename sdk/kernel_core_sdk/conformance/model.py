"""Conformance suite for model architectures: logits must match Hugging Face transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kernel_core.contracts.attention import AttentionBackend
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.contracts.records import ModelArchitectureSpec, PluginKind
from kernel_core_sdk.conformance._paged import scattered_block_tables, step_metadata
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.conformance._reference import ReferenceAttentionBackend

BLOCK_SIZE = 4
TOLERANCE = 1e-4


class ModelArchitectureConformance(PluginUnderTest):
    """Subclass as ``TestMyModel(ModelArchitectureConformance)`` to check a model architecture.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``hf_config``: a *tiny* ``transformers`` config of the architecture (two layers, hidden
      size 64, a small vocabulary): the suite builds a randomly initialised model from it and
      saves it as a safetensors folder.
    - ``plugin_name`` (optional): the architecture's record name, when the module registers several.

    Fixtures you may override:

    - ``model_folder``: the Hugging Face folder to load (default: built from ``hf_config``).
    - ``attention_backend``: the backend the model runs on (default: the suite's dense reference,
      so that a model is tested apart from any attention plugin).
    - ``attention_scale``: the ``metadata.scale`` the runner passes (default ``head_size**-0.5``).
    - ``device``: where the model runs (default CPU).

    Logits from ``forward`` + ``compute_logits`` must be within 1e-4 of transformers' in float32,
    for a whole prompt, for decode steps over the paged cache, and for requests batched together.
    """

    kind = PluginKind.MODEL_ARCHITECTURE
    contract = ModelArchitecture

    @pytest.fixture
    def model_folder(self, hf_config: object, tmp_path: Path) -> Path:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        folder = tmp_path / "model"
        AutoModelForCausalLM.from_config(hf_config).save_pretrained(folder)
        return folder

    @pytest.fixture
    def hf_model(self, model_folder: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()

    @pytest.fixture
    def attention_backend(self) -> AttentionBackend:
        return ReferenceAttentionBackend()

    @pytest.fixture
    def model(
        self,
        implementation: type[ModelArchitecture],
        model_folder: Path,
        attention_backend: AttentionBackend,
        device: torch.device,
    ) -> ModelArchitecture:
        return implementation.from_pretrained(
            model_folder, attention=attention_backend, dtype=torch.float32, device=device
        )

    @pytest.fixture
    def attention_scale(self, model: ModelArchitecture) -> float:
        return model.head_size**-0.5

    @pytest.fixture
    def prompts(self, hf_model: torch.nn.Module) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        vocab = hf_model.config.vocab_size
        return [torch.randint(vocab, (length,), generator=generator) for length in (9, 5)]

    @pytest.fixture
    def runner(
        self,
        model: ModelArchitecture,
        hf_model: torch.nn.Module,
        attention_backend: AttentionBackend,
        attention_scale: float,
        device: torch.device,
    ) -> Runner:
        return Runner(model, hf_model, attention_backend, attention_scale, device)

    def test_record_lists_the_architecture(self, plugin_spec: ModelArchitectureSpec, model_folder: Path) -> None:
        architectures = json.loads((model_folder / "config.json").read_text())["architectures"]
        assert set(architectures) & plugin_spec.architectures, (architectures, plugin_spec.architectures)

    def test_prompt_logits_match_transformers(self, runner: Runner, prompts: list[torch.Tensor]) -> None:
        prompt = prompts[0]
        runner.allocate([len(prompt)])
        assert_matches(runner.step({0: prompt}), runner.hf_logits(prompt), "whole prompt")

    def test_decode_steps_match_transformers(self, runner: Runner, prompts: list[torch.Tensor]) -> None:
        prompt = prompts[0]
        runner.allocate([len(prompt)])
        expected = runner.hf_logits(prompt)
        assert_matches(runner.step({0: prompt[:-3]}), expected[:-3], "prefill")
        for position in range(len(prompt) - 3, len(prompt)):
            token = prompt[position : position + 1]
            assert_matches(runner.step({0: token}), expected[position : position + 1], f"decode at {position}")

    def test_batched_requests_match_transformers(self, runner: Runner, prompts: list[torch.Tensor]) -> None:
        long, short = prompts
        runner.allocate([len(long), len(short)])
        logits = runner.step({0: long[:4], 1: short})
        assert_matches(logits[:4], runner.hf_logits(long)[:4], "first request of a batch")
        assert_matches(logits[4:], runner.hf_logits(short), "second request of a batch")
        logits = runner.step({0: long[4:]})
        assert_matches(logits, runner.hf_logits(long)[4:], "chunked prefill after a batched step")


class Runner:
    """The smallest model runner: paged caches, a block table per request, one step at a time."""

    def __init__(
        self,
        model: ModelArchitecture,
        hf_model: torch.nn.Module,
        attention: AttentionBackend,
        scale: float,
        device: torch.device,
    ) -> None:
        self.model, self.hf_model, self.attention, self.scale, self.device = model, hf_model, attention, scale, device
        self.tables: list[list[int]] = []
        self.cached: list[int] = []
        self.kv_caches: list[torch.Tensor] = []

    def allocate(self, lengths: list[int]) -> None:
        """Scatter the requests over a pool with spare blocks, and allocate every layer's cache."""
        num_blocks = sum(math.ceil(n / BLOCK_SIZE) for n in lengths) + 2
        self.tables = scattered_block_tables(lengths, BLOCK_SIZE, num_blocks, torch.Generator().manual_seed(0))
        self.cached = [0] * len(lengths)
        shape = self.attention.kv_cache_shape(num_blocks, BLOCK_SIZE, self.model.num_kv_heads, self.model.head_size)
        self.kv_caches = [torch.zeros(shape, device=self.device) for _ in range(self.model.num_layers)]

    def step(self, new_tokens: dict[int, torch.Tensor]) -> torch.Tensor:
        """Logits of every new token, for requests (by index) computing ``new_tokens[i]`` this step."""
        batch = list(new_tokens)
        metadata = step_metadata(
            [self.tables[i] for i in batch],
            [self.cached[i] for i in batch],
            [len(new_tokens[i]) for i in batch],
            BLOCK_SIZE,
            self.scale,
            self.device,
        )
        input_ids = torch.cat([new_tokens[i] for i in batch]).to(self.device)
        positions = torch.cat(
            [torch.arange(self.cached[i], self.cached[i] + len(new_tokens[i])) for i in batch]
        ).to(self.device)
        with torch.no_grad():
            hidden = self.model.forward(input_ids, positions, self.kv_caches, metadata)
            logits = self.model.compute_logits(hidden)
        for i in batch:
            self.cached[i] += len(new_tokens[i])
        return logits.float().cpu()

    def hf_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """transformers' logits for one whole sequence, the reference."""
        with torch.no_grad():
            return self.hf_model(tokens[None]).logits[0].float()


def assert_matches(logits: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert logits.shape == expected.shape, f"{what}: shape {tuple(logits.shape)}, expected {tuple(expected.shape)}"
    worst = (logits - expected).abs().max().item()
    assert worst <= TOLERANCE, f"{what}: logits differ from transformers' by up to {worst:.2e} (> {TOLERANCE})"
