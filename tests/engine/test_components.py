"""How the engine picks its model plugin and hands it MoE options: only to one whose
``from_pretrained`` takes ``moe`` (older plugins keep working), with the kernel selected by
``moe_kernel`` and ``moe_quantization``; MoE settings for a model plugin without it are refused,
naming them, and so is a model family no installed plugin runs."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import kernel_core
from kernel_core.config import EngineConfig
from kernel_core.contracts.records import MoEKernelSpec
from kernel_core.engine.components import _device, _moe_options
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.engine.plugin_options import PluginOptions
from kernel_core.errors import InvalidModelFolderError, KernelCoreError, UnknownPluginError
from kernel_core.modeling.moe import MoEOptions
from kernel_core_sdk.conformance import ReferenceMoEKernel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
#: What MoE selection reads of a platform: a CPU with no default MoE kernel.
CPU_PLATFORM = types.SimpleNamespace(
    name="cpu", device_type="cpu", device=lambda: CPU, default_kernel=lambda kind: (None, "")
)


class MoEModel:
    """A model plugin class written for plugin API 1.3: its ``from_pretrained`` takes ``moe``."""

    @classmethod
    def from_pretrained(cls, folder: Path, *, attention, dtype, device, moe: MoEOptions | None = None):
        raise AssertionError("not loaded in these tests")


class DenseModel:
    """A model plugin class written before MoE options existed."""

    @classmethod
    def from_pretrained(cls, folder: Path, *, attention, dtype, device):
        raise AssertionError("not loaded in these tests")


class Int8Reference(ReferenceMoEKernel):
    """The reference kernel under a class of its own, so a test sees that it was the one picked."""


@pytest.fixture
def manager(kcore_plugin_manager, kcore_register, monkeypatch: pytest.MonkeyPatch):
    """Two reference kernels: "reference" (priority 1, no quantization) and "int8-reference"."""
    module = types.ModuleType("kc_test_engine_moe")
    module.kernel_core_api = "1.3"
    module.ReferenceMoEKernel, module.Int8Reference = ReferenceMoEKernel, Int8Reference
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @kernel_core.hookimpl
    def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
        return [
            MoEKernelSpec(name="reference", description="per token", priority=1,
                          implementation=f"{module.__name__}:ReferenceMoEKernel"),
            MoEKernelSpec(name="int8-reference", description="per token", quantizations=frozenset({"int8"}),
                          implementation=f"{module.__name__}:Int8Reference"),
        ]

    module.kernel_core_moe_kernels = kernel_core_moe_kernels
    kcore_register(module)
    return kcore_plugin_manager


@pytest.mark.parametrize(
    ("settings", "kernel_class"),
    [
        ({}, ReferenceMoEKernel),
        ({"moe_quantization": "int8"}, Int8Reference),
        ({"moe_kernel": "int8-reference"}, Int8Reference),
    ],
    ids=["by-priority", "by-quantization", "by-name"],
)
def test_a_model_taking_moe_gets_the_selected_kernel(manager, settings: dict, kernel_class: type) -> None:
    (moe,) = _moe_options(EngineConfig(model="m", **settings), PluginOptions(manager, {}), MoEModel, CPU_PLATFORM).values()
    assert type(moe.kernel) is kernel_class and moe.quantization == settings.get("moe_quantization")


def test_an_unknown_moe_kernel_is_refused_naming_it_and_the_installed_ones(manager) -> None:
    installed = "installed MoE kernels: int8-reference (on cpu/cuda/xpu; quantizations: int8), reference"
    with pytest.raises(UnknownPluginError, match=rf"moe_kernel 'fused' is not installed; {re.escape(installed)}"):
        _moe_options(EngineConfig(model="m", moe_kernel="fused"), PluginOptions(manager, {}), MoEModel, CPU_PLATFORM)


def test_a_model_without_moe_keeps_working_and_refuses_moe_settings(manager) -> None:
    assert _moe_options(EngineConfig(model="m"), PluginOptions(manager, {}), DenseModel, CPU_PLATFORM) == {}
    refused = "moe_kernel 'reference': the DenseModel model plugin takes no MoE options"
    with pytest.raises(KernelCoreError, match=refused):
        _moe_options(EngineConfig(model="m", moe_kernel="reference"), PluginOptions(manager, {}), DenseModel, CPU_PLATFORM)


@pytest.mark.parametrize(("field", "value"), [("moe_kernel", "torch"), ("moe_quantization", "int8")])
def test_moe_settings_on_a_dense_model_are_refused_at_start(tiny_model: Path, field: str, value: str) -> None:
    with pytest.raises(KernelCoreError, match=f"^{field} '{value}': the .* model plugin takes no MoE options"):
        LLMEngine(EngineConfig(model=str(tiny_model), num_kv_blocks=8, **{field: value}))


def test_moe_quantization_accepts_int8_only() -> None:
    with pytest.raises(ValidationError, match="moe_quantization"):
        EngineConfig(model="m", moe_quantization="int4")


def test_a_model_family_no_plugin_runs_is_refused_naming_it_and_the_installed_plugins(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "gpt-bigcode"
    folder.mkdir()
    for item in tiny_model.iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((tiny_model / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["GPTBigCodeForCausalLM"]}))
    refused = (
        rf"no model-architecture plugin runs architectures \['GPTBigCodeForCausalLM'\] of {re.escape(str(folder))}/"
        r"config.json; installed model plugins: .*llama from kernel-core-llama runs LlamaForCausalLM, MistralForCausalLM"
    )
    with pytest.raises(InvalidModelFolderError, match=refused):
        LLMEngine(EngineConfig(model=str(folder), num_kv_blocks=8))


def test_ranks_get_a_device_each_and_more_ranks_than_devices_are_refused() -> None:
    """On a GPU platform rank r takes device r; the CPU runs any number of ranks on itself."""
    gpu = types.SimpleNamespace(
        name="cuda", device_type="cuda", device_count=lambda: 2, device=lambda index=0: torch.device("cuda", index)
    )
    assert _device(gpu, 2, 1) == torch.device("cuda", 1)
    with pytest.raises(KernelCoreError, match="tensor_parallel_size 3 exceeds the 2 cuda device"):
        _device(gpu, 3, 0)
    assert _device(CPU_PLATFORM, 8, 5) == CPU

