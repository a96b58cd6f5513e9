"""Which attention backend an engine gets: the one the ``attention_backend`` setting names (refused
when it cannot run here), else the platform's default, else, where that default is not installed or
reports itself unavailable, the portable torch backend; ``kcore plugins doctor`` says which and why."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

import kernel_core
from kernel_core.cli.plugins import attention_choice
from kernel_core.contracts.attention import AttentionBackend
from kernel_core.contracts.records import AttentionBackendSpec
from kernel_core.engine.components import select_attention
from kernel_core.errors import KernelCoreError


class Portable(AttentionBackend):
    def forward(self, query, key, value, kv_cache, metadata):
        raise AssertionError("not run in these tests")


class Fast(Portable):
    pass


class Unbuilt(Portable):
    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "its kernel did not build: no compiler"


@dataclass
class FakePlatform:
    """What the selection reads of a platform."""

    default_attention_backend: str
    name: str = "fake"
    default_attention_reason: str = "measured faster"


@pytest.fixture
def manager(kcore_plugin_manager, kcore_register, monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("kc_test_attention_selection")
    module.kernel_core_api = "1.0"
    module.Portable, module.Fast, module.Unbuilt = Portable, Fast, Unbuilt
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @kernel_core.hookimpl
    def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
        return [
            AttentionBackendSpec(name=name, description="d", implementation=f"{module.__name__}:{cls}")
            for name, cls in (("torch", "Portable"), ("fast", "Fast"), ("unbuilt", "Unbuilt"))
        ]

    module.kernel_core_attention_backends = kernel_core_attention_backends
    kcore_register(module)
    return kcore_plugin_manager


def test_the_platform_default_when_it_can_run(manager) -> None:
    choice = select_attention(manager, FakePlatform("fast"), None)
    assert choice.registration.name == "fast"
    assert choice.reason == "the fake platform's default (measured faster)"


@pytest.mark.parametrize(
    ("default", "problem"),
    [("unbuilt", "cannot run here: its kernel did not build: no compiler"), ("absent", "is not installed")],
)
def test_a_default_that_cannot_run_gives_way_to_torch(manager, default: str, problem: str) -> None:
    choice = select_attention(manager, FakePlatform(default), None)
    assert choice.registration.name == "torch"
    assert f"{default!r} {problem}, so the portable 'torch'" in choice.reason


def test_the_setting_wins_and_is_refused_when_it_cannot_run(manager) -> None:
    assert select_attention(manager, FakePlatform("fast"), "torch").registration.name == "torch"
    with pytest.raises(KernelCoreError, match="attention_backend 'unbuilt' cannot run on this machine: its kernel"):
        select_attention(manager, FakePlatform("fast"), "unbuilt")


def test_doctor_reports_the_choice_and_why(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = types.SimpleNamespace(platform=FakePlatform("unbuilt"))
    monkeypatch.setattr("kernel_core.platforms.select_platform", lambda manager: chosen)
    ((label, problem),) = attention_choice(manager)
    assert problem is None
    assert label.startswith("attention backend for this machine: torch, the fake platform's default")
    assert "'unbuilt' cannot run here: its kernel did not build" in label
