"""Conformance suite for executors: an engine running on the executor gives Hugging Face's greedy
tokens, its steps are plain data, and shutdown is final and idempotent."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from kernel_core.config import EngineConfig
from kernel_core.contracts.executor import Executor, ModelStep
from kernel_core.contracts.records import ImplementationSpec, PluginKind
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import KernelCoreError
from kernel_core.plugins import Distribution, PluginManager, discover_entry_points
from kernel_core.sampling_params import SamplingParams
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.conformance.serving import PROMPTS, save_tiny_model
from kernel_core_sdk.hf_oracle import hf_greedy

MAX_TOKENS = 6


class ExecutorConformance(PluginUnderTest):
    """Subclass as ``TestMyExecutor(ExecutorConformance)`` to check an executor.

    The suite builds engines with ``distributed_executor`` naming the executor, on the installed
    plugins plus ``plugin_module`` when it is not installed. Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the executor's record name, when the module registers several.

    Fixtures you may override:

    - ``tensor_parallel_size``: the size the engines run at (default 1).
    - ``engine_settings``: further :class:`~kernel_core.config.EngineConfig` fields (default: a
      16-token budget, so steps mix chunked prefills with decodes).
    """

    kind = PluginKind.EXECUTOR
    contract = Executor

    @pytest.fixture(scope="class")
    @classmethod
    def model_folder(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The SDK's tiny random Llama (2 layers, grouped KV heads), saved with a tokenizer."""
        return save_tiny_model(tmp_path_factory.mktemp("executor-conformance") / "model")

    @pytest.fixture
    def tensor_parallel_size(self) -> int:
        return 1

    @pytest.fixture
    def engine_settings(self) -> dict[str, Any]:
        return dict(num_kv_blocks=64, block_size=16, max_num_batched_tokens=16)

    @pytest.fixture
    def plugin_manager(self, plugin_module: ModuleType, plugin_spec: ImplementationSpec) -> PluginManager:
        """The installed plugins (a platform, a model, attention, cache, scheduler) and the executor."""
        manager = PluginManager()
        manager.load_entry_points(discover_entry_points())
        if plugin_spec.name not in {r.name for r in manager.registrations(PluginKind.EXECUTOR)}:
            manager.register(plugin_module, name=plugin_module.__name__, distribution=Distribution("under-test", "0"))
        return manager

    @pytest.fixture
    def engine(
        self, model_folder: Path, plugin_spec: ImplementationSpec, tensor_parallel_size: int,
        engine_settings: dict[str, Any], plugin_manager: PluginManager,
    ) -> Iterator[LLMEngine]:
        config = EngineConfig(
            model=str(model_folder), distributed_executor=plugin_spec.name,
            tensor_parallel_size=tensor_parallel_size, **engine_settings,
        )
        engine = LLMEngine(config, plugin_manager)
        yield engine
        engine.shutdown()

    def test_engine_runs_on_the_executor(self, engine: LLMEngine, implementation: type) -> None:
        assert isinstance(engine.executor, implementation)
        engine.executor.check_health()

    def test_greedy_tokens_equal_transformers(self, engine: LLMEngine, model_folder: Path) -> None:
        from transformers import AutoModelForCausalLM

        steps = record_steps(engine)
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
        for index, prompt in enumerate(PROMPTS):
            engine.add_request(str(index), prompt, params)
        outputs = {}
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    outputs[output.request_id] = output
        hf = AutoModelForCausalLM.from_pretrained(model_folder)
        for index, prompt in enumerate(PROMPTS):
            completion = outputs[str(index)].outputs[0]
            assert completion.finish_reason == "length", completion.error
            assert list(completion.token_ids) == hf_greedy(hf, prompt, MAX_TOKENS), f"prompt {index}"
        assert any(len(step.requests) > 1 for step in steps)  # requests really shared steps

    def test_model_step_is_plain_data(self, engine: LLMEngine) -> None:
        """Every step is plain data, which an executor may send to other processes as is."""
        steps = record_steps(engine)
        engine.add_request("plain", list(PROMPTS[1]), SamplingParams(temperature=0.8, seed=3, max_tokens=2, logprobs=2,
                                                                      prompt_logprobs=1))
        while engine.has_unfinished_requests():
            engine.step()
        assert steps and any(r.sample is not None and r.prompt_logprobs is not None for s in steps for r in s.requests)
        for step in steps:
            assert not_plain(step, "step") == []

    def test_lora_adapters_in_a_mixed_batch_equal_one_worker(
        self, model_folder: Path, plugin_spec: ImplementationSpec, tensor_parallel_size: int,
        engine_settings: dict[str, Any], plugin_manager: PluginManager, tmp_path: Path,
    ) -> None:
        """Two LoRA adapters made by ``peft`` and base rows in one batch: the executor's tokens
        equal the in-process engine's (adapters reach every worker through ``write_adapter``)."""
        from kernel_core_sdk.hf_oracle import make_lora_adapter

        adapters = {
            "attention": make_lora_adapter(model_folder, tmp_path / "attention", 1, r=4,
                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
            "mlp": make_lora_adapter(model_folder, tmp_path / "mlp", 2, r=8, lora_alpha=32,
                                     target_modules=["gate_proj", "up_proj", "down_proj"]),
        }
        lora = dict(enable_lora=True, max_loras=2, max_lora_rank=8)
        ours = EngineConfig(model=str(model_folder), distributed_executor=plugin_spec.name,
                            tensor_parallel_size=tensor_parallel_size, **engine_settings, **lora)
        reference = EngineConfig(model=str(model_folder), **engine_settings, **lora)
        tokens = adapter_batch_tokens(LLMEngine(ours, plugin_manager), adapters)
        expected = adapter_batch_tokens(LLMEngine(reference), adapters)
        assert tokens == expected
        for adapter in adapters:  # the comparison is not vacuous
            assert any(expected[(adapter, i)] != expected[(None, i)] for i in range(len(PROMPTS))), adapter

    def test_shutdown_is_idempotent_and_final(self, engine: LLMEngine) -> None:
        engine.shutdown()
        engine.shutdown()
        with pytest.raises(KernelCoreError, match="shut down"):
            engine.executor.execute(ModelStep([]))
        with pytest.raises(KernelCoreError, match="shut down"):
            engine.executor.check_health()


def adapter_batch_tokens(
    engine: LLMEngine, adapters: dict[str, Path], max_tokens: int = MAX_TOKENS
) -> dict[tuple[str | None, int], list[int]]:
    """(adapter or None, prompt index) -> greedy tokens of every :data:`PROMPTS` prompt on every
    adapter and on the base model, all in one batch; the engine is shut down after."""
    outputs = adapter_batch_outputs(engine, adapters, SamplingParams(temperature=0, max_tokens=max_tokens))
    return {row: list(completion.token_ids) for row, completion in outputs.items()}


def adapter_batch_outputs(
    engine: LLMEngine, adapters: dict[str, Path], params: SamplingParams
) -> dict[tuple[str | None, int], Any]:
    """(adapter or None, prompt index) -> the completion of every :data:`PROMPTS` prompt on every
    adapter and on the base model under ``params``, all in one batch; the engine is shut down after."""
    rows: dict[str, tuple[str | None, int]] = {}
    try:
        for name, path in adapters.items():
            engine.load_adapter(name, path)
        for adapter in (None, *adapters):
            for index, prompt in enumerate(PROMPTS):
                request_id = f"{adapter}-{index}"
                rows[request_id] = (adapter, index)
                engine.add_request(request_id, list(prompt), params, adapter=adapter)
        done = {}
        while engine.has_unfinished_requests():
            done.update({o.request_id: o.outputs[0] for o in engine.step() if o.finished})
    finally:
        engine.shutdown()
    errors = [c.error for c in done.values() if c.finish_reason != "length"]
    assert not errors, errors
    return {rows[request_id]: completion for request_id, completion in done.items()}


PLAIN_SCALARS = (str, int, float, bool, type(None))


def not_plain(value: Any, where: str) -> list[str]:
    """Where ``value`` holds anything but dataclasses, lists, tuples, dicts, scalars and pydantic
    models of those: no tensor, generator or engine object crosses the executor boundary."""
    if isinstance(value, PLAIN_SCALARS):
        return []
    if isinstance(value, BaseModel):
        return not_plain(value.model_dump(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [bad for f in dataclasses.fields(value) for bad in not_plain(getattr(value, f.name), f"{where}.{f.name}")]
    if isinstance(value, (list, tuple)):
        return [bad for i, item in enumerate(value) for bad in not_plain(item, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in not_plain(k, where) + not_plain(v, f"{where}[{k!r}]")]
    return [f"{where}: {type(value).__name__}"]


def record_steps(engine: LLMEngine) -> list[ModelStep]:
    """Every step the engine hands its executor from now on."""
    steps: list[ModelStep] = []
    execute = engine.executor.execute

    def recording(step: ModelStep) -> Any:
        steps.append(step)
        return execute(step)

    engine.executor.execute = recording  # type: ignore[method-assign]
    return steps
