"""Every conformance suite, run against the implementation its kind's template generates."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core.contracts.platform import Platform
from kernel_core.contracts.records import PluginKind
from kernel_core_sdk.conformance import (
    AttentionBackendConformance,
    CacheManagerConformance,
    ExecutorConformance,
    LoRAKernelConformance,
    ModelArchitectureConformance,
    MoEKernelConformance,
    PlatformConformance,
    SchedulerConformance,
    TunerConformance,
)
from kernel_core_sdk.conformance.registration import registered_records


class TestPlatformTemplate(PlatformConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.PLATFORM)

    @pytest.fixture
    def platform_class(self, plugin_module: ModuleType) -> type[Platform]:
        (record,) = registered_records(plugin_module, PluginKind.PLATFORM)
        return record.load()


class TestSchedulerPolicyTemplate(SchedulerConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.SCHEDULER_POLICY)


class TestCacheManagerTemplate(CacheManagerConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.CACHE_MANAGER)


class TestAttentionBackendTemplate(AttentionBackendConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.ATTENTION_BACKEND)


class TestMoEKernelTemplate(MoEKernelConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.MOE_KERNEL)


class TestLoRAKernelTemplate(LoRAKernelConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.LORA_KERNEL)


class TestExecutorTemplate(ExecutorConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.EXECUTOR)


class TestTunerTemplate(TunerConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.TUNER)


class TestModelArchitectureTemplate(ModelArchitectureConformance):
    @pytest.fixture
    def plugin_module(self, rendered_plugin) -> ModuleType:
        return rendered_plugin(PluginKind.MODEL_ARCHITECTURE)

    @pytest.fixture
    def hf_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1,
        )
