"""The Ray executor on a Ray instance started on this machine: the SDK's executor suite at size 2
(Hugging Face's greedy tokens, LoRA adapters in a mixed batch equal to one worker), a rank whose
actor dies and a cluster address that does not answer failing clearly, and nothing left running."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import ray
import torch.distributed as dist

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import KernelCoreError
from kernel_core.sampling_params import SamplingParams
from kernel_core_executor_ray import plugin
from kernel_core_executor_ray.executor import RayExecutor
from kernel_core_sdk.conformance import ExecutorConformance
from kernel_core_sdk.conformance.serving import PROMPTS, save_tiny_model

SMALL = dict(num_kv_blocks=64, block_size=16, max_num_batched_tokens=16)


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    yield
    assert not ray.is_initialized()
    assert not dist.is_initialized()


class TestRayConformance(ExecutorConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tensor_parallel_size(self) -> int:
        return 2


def test_a_rank_whose_actor_dies_fails_the_requests_naming_it(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    engine = LLMEngine(EngineConfig(model=str(folder), tensor_parallel_size=2, distributed_executor="ray", **SMALL))
    try:
        assert isinstance(engine.executor, RayExecutor)
        for index, prompt in enumerate(PROMPTS):
            engine.add_request(str(index), list(prompt), SamplingParams(temperature=0, max_tokens=6))
        engine.step()
        ray.kill(engine.executor._actors[1])
        started, finished = time.monotonic(), []
        while engine.has_unfinished_requests():
            finished += [o.outputs[0] for o in engine.step() if o.finished]
            assert time.monotonic() - started < 60, "the engine hung on a lost rank"
        assert [c.finish_reason for c in finished] == ["error"] * len(PROMPTS)
        assert all("tensor-parallel worker rank 1 (its Ray actor ended" in c.error for c in finished), finished
    finally:
        engine.shutdown()


def test_an_address_that_does_not_answer_is_refused_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(KernelCoreError, match=rf"the Ray cluster at '{address}' does not answer .*ray start --head"):
        LLMEngine(EngineConfig(
            model=str(save_tiny_model(tmp_path / "model")), tensor_parallel_size=2, distributed_executor="ray",
            plugin_options={"executor.ray": {"address": address, "connect_timeout_s": 2}}, **SMALL,
        ))
    assert time.monotonic() - started < 30
