"""The uniproc executor: the SDK's executor conformance suite, then its refusals and the default."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from kernel_core.config import EngineConfig
from kernel_core.contracts.executor import ExecutorContext
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import KernelCoreError
from kernel_core.plugins import PluginManager
from kernel_core_executor_uniproc import plugin
from kernel_core_sdk.conformance import ExecutorConformance


class TestUniprocConformance(ExecutorConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def test_is_the_default_at_size_one() -> None:
    (spec,) = plugin.kernel_core_executors()
    assert (spec.name, spec.priority, spec.max_tensor_parallel_size) == ("uniproc", 10, 1)


@pytest.mark.parametrize("named", [None, "uniproc"])
def test_size_above_one_is_refused_naming_the_setting_and_the_package(
    named: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before any model is loaded (the selection reads the record), when no installed
    executor runs more than one rank or uniproc is named."""
    monkeypatch.setenv("KERNEL_CORE_DISABLE_PLUGINS", "kernel-core-executor-mp,kernel-core-executor-ray")
    manager = PluginManager.from_environment()
    with pytest.raises(KernelCoreError, match="tensor_parallel_size 2.*kernel-core-executor-mp"):
        LLMEngine(EngineConfig(model="/nonexistent", tensor_parallel_size=2, distributed_executor=named), manager)


def test_the_executor_itself_refuses_more_than_one_rank() -> None:
    from kernel_core_executor_uniproc.executor import UniprocExecutor

    context = ExecutorContext(EngineConfig(model="x", tensor_parallel_size=2), 2, lambda rank, size: None, lambda rank, size: None)
    with pytest.raises(KernelCoreError, match="tensor_parallel_size 2: the uniproc executor runs one worker"):
        UniprocExecutor(context)


def test_only_public_kernel_core_names_are_imported() -> None:
    from kernel_core_sdk.surface import private_imports

    private = private_imports(Path(__file__).resolve().parents[1] / "kernel_core_executor_uniproc")
    assert not private, f"names outside the SDK's public surface: {private}"
