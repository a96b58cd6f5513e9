"""Which attention backend, LoRA kernel and MoE kernel an engine gets (plugin API 1.6): the one a
setting names (refused, naming it, the platform and what it cannot run, when its record or its
``unavailable_reason()`` says it cannot run here), else the platform's default, else, where that
default is not installed or cannot run, the portable torch backend (attention) or the
highest-priority kernel that runs here (LoRA, MoE); ``kcore plugins doctor`` says which and why."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import kernel_core
from kernel_core.cli.plugins import kernel_choices
from kernel_core.config import EngineConfig
from kernel_core.contracts.attention import AttentionBackend
from kernel_core.contracts.lora import LoRAKernel
from kernel_core.contracts.platform import Platform
from kernel_core.contracts.records import AttentionBackendSpec, LoRAKernelSpec, MoEKernelSpec, PluginKind
from kernel_core.engine.components import build_components
from kernel_core.engine.selection import Needs, choose, select_kernel
from kernel_core.errors import KernelCoreError, PluginError
from kernel_core.modeling.moe import MoEOptions
from kernel_core.plugins import Distribution, PluginManager
from kernel_core_sdk.conformance import ReferenceMoEKernel

ATTENTION, LORA = PluginKind.ATTENTION_BACKEND, PluginKind.LORA_KERNEL


class Portable(AttentionBackend):
    def forward(self, query, key, value, kv_cache, metadata):
        raise AssertionError("not run in these tests")


class Fast(Portable):
    pass


class Unbuilt(Portable):
    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "its kernel did not build: no compiler"


class TorchLoRA(LoRAKernel):
    def apply(self, output, x, lora_a, lora_b, batch):
        raise AssertionError("not run in these tests")


class NoGPULoRA(TorchLoRA):
    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "no GPU, and TRITON_INTERPRET is not set"


class NoGPUMoE(ReferenceMoEKernel):
    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "no GPU, and TRITON_INTERPRET is not set"


@dataclass
class FakePlatform:
    """What the selection reads of a platform."""

    default_attention_backend: str = "torch"
    default_lora_kernel: str | None = None
    default_moe_kernel: str | None = None
    name: str = "fake"
    device_type: str = "cpu"
    default_attention_reason: str = "measured faster"
    default_lora_reason: str = "measured faster"
    default_moe_reason: str = "measured faster"
    default_kernel = Platform.default_kernel


MODULE = "kc_test_attention_selection"


@kernel_core.hookimpl
def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
    spec = dict(description="d")
    return [
        AttentionBackendSpec(name="torch", implementation=f"{MODULE}:Portable", **spec),
        AttentionBackendSpec(name="fast", implementation=f"{MODULE}:Fast", **spec),
        AttentionBackendSpec(name="unbuilt", implementation=f"{MODULE}:Unbuilt", **spec),
        AttentionBackendSpec(name="gpu-only", implementation=f"{MODULE}:Fast", device_types={"cuda"}, **spec),
        AttentionBackendSpec(name="bf16-only", implementation=f"{MODULE}:Fast", dtypes={"bfloat16"}, **spec),
        AttentionBackendSpec(name="head-128", implementation=f"{MODULE}:Fast", head_sizes={128}, **spec),
        AttentionBackendSpec(name="block-32", implementation=f"{MODULE}:Fast", block_sizes={32, 64}, **spec),
    ]


@kernel_core.hookimpl
def kernel_core_lora_kernels() -> list[LoRAKernelSpec]:
    return [
        LoRAKernelSpec(name="torch", description="d", implementation=f"{MODULE}:TorchLoRA"),
        LoRAKernelSpec(name="triton", description="d", implementation=f"{MODULE}:NoGPULoRA", priority=10),
        LoRAKernelSpec(name="gpu", description="d", implementation=f"{MODULE}:TorchLoRA", priority=20,
                       device_types={"cuda", "xpu"}),
    ]


@kernel_core.hookimpl
def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
    return [
        MoEKernelSpec(name="reference", description="d", implementation=f"{MODULE}:ReferenceMoEKernel"),
        MoEKernelSpec(name="triton", description="d", implementation=f"{MODULE}:NoGPUMoE", priority=10),
    ]


def _module() -> types.ModuleType:
    module = types.ModuleType(MODULE)
    module.kernel_core_api = "1.6"
    module.Portable, module.Fast, module.Unbuilt = Portable, Fast, Unbuilt
    module.TorchLoRA, module.NoGPULoRA = TorchLoRA, NoGPULoRA
    module.ReferenceMoEKernel, module.NoGPUMoE = ReferenceMoEKernel, NoGPUMoE
    module.kernel_core_attention_backends = kernel_core_attention_backends
    module.kernel_core_lora_kernels = kernel_core_lora_kernels
    module.kernel_core_moe_kernels = kernel_core_moe_kernels
    return module


@pytest.fixture
def manager(kcore_plugin_manager, kcore_register, monkeypatch: pytest.MonkeyPatch):
    module = _module()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    kcore_register(module)
    return kcore_plugin_manager


def test_the_platform_default_when_it_can_run(manager) -> None:
    choice = select_kernel(manager, FakePlatform("fast"), ATTENTION, None)
    assert choice.registration.name == "fast"
    assert choice.reason == "the fake platform's default (measured faster)"


@pytest.mark.parametrize(
    ("default", "needs", "problem"),
    [
        ("unbuilt", None, "cannot run here: its kernel did not build: no compiler"),
        ("absent", None, "is not installed"),
        ("gpu-only", None, "cannot run here: device type cpu is not among its device_types (cuda)"),
        ("bf16-only", Needs("cpu", "float32"), "cannot run here: dtype float32 is not among its dtypes (bfloat16)"),
        ("head-128", Needs("cpu", head_size=64), "cannot run here: head size 64 is not among its head_sizes (128)"),
        ("block-32", Needs("cpu", block_size=16), "cannot run here: block_size 16 is not among its block_sizes (32, 64)"),
    ],
)
def test_a_default_that_cannot_run_gives_way_to_torch(
    manager, default: str, needs: Needs | None, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        choice = select_kernel(manager, FakePlatform(default), ATTENTION, None, needs)
    assert choice.registration.name == "torch"
    assert f"{default!r} {problem}, so the portable 'torch'" in choice.reason
    assert f"attention-backend {default!r}, fake's default, {problem}; using 'torch'" in caplog.text


def test_the_setting_wins_and_is_refused_naming_backend_platform_and_field(manager) -> None:
    assert select_kernel(manager, FakePlatform("fast"), ATTENTION, "torch").registration.name == "torch"
    with pytest.raises(KernelCoreError, match=r"attention_backend 'unbuilt' cannot run on this machine \(the fake "
                                              r"platform\): its kernel did not build"):
        select_kernel(manager, FakePlatform("fast"), ATTENTION, "unbuilt")
    with pytest.raises(KernelCoreError, match=r"attention_backend 'gpu-only' cannot run on this machine \(the fake "
                                              r"platform\): device type cpu is not among its device_types \(cuda\)"):
        select_kernel(manager, FakePlatform("fast"), ATTENTION, "gpu-only")
    with pytest.raises(KernelCoreError, match=r"attention_backend 'bf16-only' .*: dtype float16 is not among its dtypes"):
        select_kernel(manager, FakePlatform(), ATTENTION, "bf16-only", Needs("cpu", "float16"))


def test_a_portable_default_that_cannot_run_is_an_error(manager) -> None:
    with pytest.raises(KernelCoreError, match="the portable attention-backend 'unbuilt' cannot run here: its kernel"):
        choose(manager, PluginKind.ATTENTION_BACKEND, setting="attention_backend", configured=None,
               platform=FakePlatform(), needs=Needs("cpu"), default="unbuilt", default_reason="r", fallback="unbuilt")
    with pytest.raises(KernelCoreError, match=r"the portable attention-backend 'gpu-only' cannot run on the fake "
                                              r"platform: device type cpu"):
        choose(manager, PluginKind.ATTENTION_BACKEND, setting="attention_backend", configured=None,
               platform=FakePlatform(), needs=Needs("cpu"), default="absent", default_reason="r", fallback="gpu-only")


def test_lora_kernels_by_priority_skip_those_that_cannot_run(manager) -> None:
    """"gpu" (20) runs on GPUs only and "triton" (10) reports itself unavailable: torch it is."""
    choice = select_kernel(manager, FakePlatform(), LORA, None)
    assert choice.registration.name == "torch"
    assert choice.reason == "the fake platform names no default, so the highest-priority one that runs here (0)"
    assert select_kernel(manager, FakePlatform(device_type="cuda"), LORA, None).registration.name == "gpu"


@pytest.mark.parametrize("default", ["triton", "absent"])
def test_a_platform_lora_default_that_cannot_run_gives_way(manager, default: str) -> None:
    choice = select_kernel(manager, FakePlatform(default_lora_kernel=default), LORA, None)
    assert choice.registration.name == "torch"
    assert f"the fake platform's default (measured faster), but {default!r}" in choice.reason


def test_a_platform_lora_default_that_runs_is_taken(manager) -> None:
    choice = select_kernel(manager, FakePlatform(default_lora_kernel="torch", device_type="cuda"), LORA, None)
    assert (choice.registration.name, choice.reason) == ("torch", "the fake platform's default (measured faster)")


def test_a_named_lora_kernel_that_cannot_run_is_refused_with_its_reason(manager) -> None:
    with pytest.raises(KernelCoreError, match=r"lora_kernel 'triton' cannot run on this machine \(the fake platform\): "
                                              "no GPU, and TRITON_INTERPRET is not set"):
        select_kernel(manager, FakePlatform(), LORA, "triton")


def test_moe_kernels_skip_unavailable_ones_and_refuse_them_by_name(manager) -> None:
    cpu = torch.device("cpu")
    assert isinstance(MoEOptions.select(cpu, manager=manager).kernel, ReferenceMoEKernel)
    platform = FakePlatform(default_moe_kernel="triton")
    assert not isinstance(MoEOptions.select(cpu, manager=manager, platform=platform).kernel, NoGPUMoE)
    with pytest.raises(PluginError, match=r"moe_kernel 'triton' cannot run on this machine \(cpu\): no GPU"):
        MoEOptions.select(cpu, kernel="triton", manager=manager)


def test_doctor_reports_each_choice_and_why(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = types.SimpleNamespace(platform=FakePlatform("unbuilt", default_lora_kernel="triton"))
    monkeypatch.setattr("kernel_core.platforms.select_platform", lambda manager: chosen)
    (attention, lora, moe) = kernel_choices(manager)
    assert attention[1] is None and lora[1] is None and moe[1] is None
    assert attention[0].startswith("attention backend for this machine: torch, the fake platform's default")
    assert "'unbuilt' cannot run here: its kernel did not build" in attention[0]
    assert lora[0].startswith("lora kernel for this machine: torch, the fake platform's default (measured faster), "
                              "but 'triton' cannot run here: no GPU")
    assert moe[0] == "moe kernel for this machine: reference, the fake platform names no default, so the " \
                     "highest-priority one that runs here (0)"


def test_the_engine_refuses_a_backend_the_model_cannot_run_on(tiny_model: Path, monkeypatch) -> None:
    """The tiny Llama's heads are 16 wide: "head-128" is refused at start-up naming both."""
    module = types.ModuleType("kc_test_head_128")
    module.kernel_core_api = "1.6"
    module.Fast = Fast

    @kernel_core.hookimpl
    def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
        return [AttentionBackendSpec(name="head-128", description="d", implementation="kc_test_head_128:Fast",
                                     head_sizes={128})]

    module.kernel_core_attention_backends = kernel_core_attention_backends
    monkeypatch.setitem(sys.modules, module.__name__, module)
    manager = PluginManager.from_environment()
    manager.register(module, name=module.__name__, distribution=Distribution("kc-test", "1.0"))
    config = EngineConfig(model=str(tiny_model), num_kv_blocks=8, attention_backend="head-128")
    with pytest.raises(KernelCoreError, match=r"attention_backend 'head-128' cannot run on this machine \(the cpu "
                                              r"platform\): head size 16 is not among its head_sizes \(128\)"):
        build_components(config, manager)


def test_a_refusal_writes_a_run_of_allowed_sizes_as_a_range() -> None:
    """A backend that runs head sizes 1 to 256 is refused naming "1-256", not 256 numbers."""
    spec = AttentionBackendSpec(
        name="wide", description="d", implementation=f"{MODULE}:Fast", head_sizes=set(range(1, 257)) | {512, 1024}
    )
    assert Needs("cpu", head_size=300).problem(spec) == "head size 300 is not among its head_sizes (1-256, 512, 1024)"
