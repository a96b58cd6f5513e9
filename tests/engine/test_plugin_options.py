"""The engine's ``plugin_options`` (plugin API 1.6): checked at start-up before weights load, each
refusal naming the option and why, options reaching the constructor of the plugin the engine
builds, and options for an installed plugin the engine does not use a warning."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

import kernel_core
from kernel_core.config import EngineConfig
from kernel_core.contracts.records import LoRAKernelSpec, SchedulerPolicySpec
from kernel_core.contracts.settings import PluginSettings, PluginSettingsError
from kernel_core.engine.plugin_options import PluginOptions
from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TileSettings(PluginSettings):
    block_m: int = Field(default=16, ge=1, description="Rows per program.")


class Tiled:
    """A LoRA kernel test double that takes settings."""

    Settings: ClassVar[type[PluginSettings]] = TileSettings

    def __init__(self, *, settings: TileSettings) -> None:
        self.settings = settings


class Plain:
    """A scheduler policy test double that takes none."""


@pytest.fixture
def manager(kcore_plugin_manager, kcore_register, monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("kc_test_plugin_options")
    module.kernel_core_api = "1.6"
    module.Tiled, module.Plain = Tiled, Plain
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @kernel_core.hookimpl
    def kernel_core_lora_kernels() -> list[LoRAKernelSpec]:
        return [
            LoRAKernelSpec(name=name, description="d", implementation=f"{module.__name__}:Tiled")
            for name in ("tiled", "other")
        ]

    @kernel_core.hookimpl
    def kernel_core_scheduler_policies() -> list[SchedulerPolicySpec]:
        return [SchedulerPolicySpec(name="plain", description="d", implementation=f"{module.__name__}:Plain")]

    module.kernel_core_lora_kernels = kernel_core_lora_kernels
    module.kernel_core_scheduler_policies = kernel_core_scheduler_policies
    kcore_register(module)
    return kcore_plugin_manager


def test_options_reach_the_constructor_and_defaults_fill_the_rest(manager) -> None:
    options = PluginOptions(manager, {"lora-kernel.tiled": {"block_m": 64}})
    assert options.create(manager.get("lora-kernel", "tiled")).settings == TileSettings(block_m=64)
    assert options.create(manager.get("lora-kernel", "other")).settings == TileSettings()
    assert isinstance(options.create(manager.get("scheduler-policy", "plain")), Plain)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lora-kernal.tiled": {}}, r"--plugin-option lora-kernal.tiled: unknown plugin kind 'lora-kernal' \(kinds taking "
         r"options: cache-manager, scheduler-policy, attention-backend, lora-kernel, moe-kernel, executor\)"),
        ({"lora-kernel": {}}, r"--plugin-option lora-kernel: expected KIND.NAME.KEY=VALUE"),
        ({"lora-kernel.fused": {}}, r"--plugin-option lora-kernel.fused: no lora-kernel plugin named 'fused' is "
         r"installed \(installed: other, tiled\)"),
        ({"scheduler-policy.plain": {"x": 1}}, r"--plugin-option scheduler-policy.plain: the scheduler-policy plugin "
         r"'plain' takes no settings \(Plain declares no Settings\)"),
        ({"platform.cpu": {"x": 1}}, r"--plugin-option platform.cpu: the engine builds no platform plugin with options"),
        ({"lora-kernel.tiled": {"block_n": 1}}, r"--plugin-option lora-kernel.tiled.block_n=1: no such setting "
         r"\(settings: block_m\)"),
        ({"lora-kernel.tiled": {"block_m": "wide"}}, r"--plugin-option lora-kernel.tiled.block_m=wide: Input should "
         r"be a valid integer"),
    ],
)
def test_each_bad_option_is_refused_naming_the_culprit(manager, options: dict, message: str) -> None:
    with pytest.raises(PluginSettingsError, match=f"^{message}"):
        PluginOptions(manager, options)


def test_options_for_a_plugin_not_used_are_a_warning(manager, caplog: pytest.LogCaptureFixture) -> None:
    options = PluginOptions(manager, {"lora-kernel.tiled": {"block_m": 2}, "lora-kernel.other": {"block_m": 3}})
    options.create(manager.get("lora-kernel", "tiled"))
    with caplog.at_level(logging.WARNING, logger="kernel_core.engine.plugin_options"):
        options.warn_unused()
    assert [r.getMessage() for r in caplog.records] == [
        "--plugin-option lora-kernel.other: the plugin is installed but this engine does not use it; its options are ignored"
    ]


def test_a_bad_option_fails_the_engine_before_the_model_loads(tmp_path: Path) -> None:
    config = EngineConfig(model=str(tmp_path / "absent"), plugin_options={"attention-backend.torch": {"bucket_bytes": 0}})
    with pytest.raises(PluginSettingsError, match=r"--plugin-option attention-backend.torch.bucket_bytes=0: Input should"):
        LLM(**config.model_dump())


def test_the_torch_backend_takes_its_bucket_size_and_outputs_stay_equal(tiny_model: Path) -> None:
    """A 1-byte cap puts every decode request in a bucket of its own: other calls, same tokens."""
    prompts = ["The capital of France is", "One, two, three,", "Hello"]
    params = SamplingParams(temperature=0, max_tokens=6)
    outputs = {}
    for bucket_bytes in (None, 1):
        options = {} if bucket_bytes is None else {"attention-backend.torch": {"bucket_bytes": bucket_bytes}}
        llm = LLM(str(tiny_model), num_kv_blocks=32, attention_backend="torch", plugin_options=options)
        assert llm.engine.components.attention.bucket_bytes == (bucket_bytes or 4 << 20)
        outputs[bucket_bytes] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outputs[1] == outputs[None]
