"""The kernel-core plugin SDK: one import for what a plugin author uses.

Records, ``hookimpl`` and the API version are imported eagerly (they import no torch), so a
plugin's entry-point module may import this package and stay cheap to discover. The base
classes of the implementations import torch, so they are resolved on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from kernel_core import PLUGIN_API_VERSION, hookimpl
from kernel_core.contracts.records import (
    AttentionBackendSpec,
    CacheManagerSpec,
    ExecutorSpec,
    ImplementationSpec,
    LoRAKernelSpec,
    ModelArchitectureSpec,
    MoEKernelSpec,
    PlatformSpec,
    PluginKind,
    SchedulerPolicySpec,
    TunerSpec,
)

__version__ = "0.1.0"

#: Base class or building-block name → the module defining it, imported on first access.
_LAZY: dict[str, str] = {
    "Platform": "kernel_core.contracts.platform",
    "MemoryInfo": "kernel_core.contracts.platform",
    "SchedulerPolicy": "kernel_core.contracts.scheduler",
    "SchedulableRequest": "kernel_core.contracts.scheduler",
    "CacheManager": "kernel_core.contracts.cache",
    "CacheStats": "kernel_core.contracts.cache",
    "AttentionBackend": "kernel_core.contracts.attention",
    "AttentionMetadata": "kernel_core.contracts.attention",
    "MoEKernel": "kernel_core.contracts.moe",
    "LoRAKernel": "kernel_core.contracts.lora",
    "LoRABatch": "kernel_core.contracts.lora",
    "NO_SLOT": "kernel_core.contracts.lora",
    # The tuner authoring surface (plugin API 1.4): the contract, the optional config fields and
    # the per-architecture default lookup.
    **dict.fromkeys(
        (
            "BASE_ADAPTER", "BaseTunerConfig", "ExcludeModules", "LayerSelection", "ModulesToSave", "RankPatterns",
            "SingleLayerTuner", "Tuner", "TunerConfig", "TunerLayer", "bias_parameters",
        ),
        "kernel_core.contracts.tuner",
    ),
    "DeltaWeightLayer": "kernel_core.contracts.delta_weight",
    "BufferDict": "kernel_core.contracts.buffers",
    # Prompt learning (API 1.4, additive): methods that change what the model reads.
    **dict.fromkeys(
        ("PastKeyValuesTuner", "PromptLearningConfig", "PromptLearningTuner", "VirtualTokensTuner"),
        "kernel_core.contracts.prompt",
    ),
    **dict.fromkeys(("COMMON_TARGET_MODULES", "by_model_type"), "kernel_core.peft.defaults"),
    "pattern_value": "kernel_core.peft.targets",
    # Serving (API 1.4, additive): how a tuner's adapters are served (TunerSpec.serving), what LoRA's
    # serving attaches to the model's projections, and the errors a serving raises.
    **dict.fromkeys(("AdapterServing", "ServedAdapter", "ServingContext", "SlotBatch"), "kernel_core.contracts.serving"),
    # The refusals a serving of a method adapting projections shares (API 1.5, additive).
    **dict.fromkeys(
        ("refuse_foreign_tensors", "refuse_shape_mismatches", "refuse_unadapted_modules"), "kernel_core.contracts.serving"
    ),
    **dict.fromkeys(("LoRAProjection", "LoRAStep", "LoRATarget"), "kernel_core.contracts.lora"),
    # Where served adapters act on a model (API 1.5, additive): hooks on projections, embeddings, KV.
    **dict.fromkeys(
        ("EmbeddingHook", "KVHook", "ProjectionHook", "ProjectionTarget", "apply_projection_hooks"),
        "kernel_core.contracts.adapter_targets",
    ),
    # Serving on a model split by tensor parallelism (API 1.7, additive): the file's geometry, the shard's cut.
    **dict.fromkeys(
        ("shard_inputs", "shard_low_rank", "shard_outputs", "unsharded_geometry"), "kernel_core.contracts.adapter_targets"
    ),
    # Serving prompt learning (API 1.5, additive): virtual tokens' embeddings or per-layer keys/values.
    **dict.fromkeys(
        ("PastKeyValuesServing", "PromptServing", "ServedPrompt", "VirtualTokensServing"),
        "kernel_core.contracts.prompt_serving",
    ),
    **dict.fromkeys(("AdapterLoadError", "KernelCoreError"), "kernel_core.errors"),
    # A plugin's settings (API 1.6): the base of the ``Settings`` model an implementation declares.
    "PluginSettings": "kernel_core.contracts.settings",
    "ModelArchitecture": "kernel_core.contracts.model",
    # Executors (API 1.7): where the model side runs, and the plain data the engine sends it.
    **dict.fromkeys(
        (
            "Executor", "ExecutorContext", "ModelStep", "PromptLogprobsRequest", "SampleRequest", "StepRequest",
            "StepResult", "Worker",
        ),
        "kernel_core.contracts.executor",
    ),
    # The public model-building surface (plugin API 1.3): what a model plugin builds its forward from.
    **dict.fromkeys(
        (
            "AttentionHeads", "AttentionOptions", "DecoderLayer", "DecoderModel", "ExpertWeights", "FusedLinear",
            "FusedMoE", "GatedMLP", "MLPBlock", "MoEOptions", "RotaryEmbedding", "SafetensorsCheckpoint",
            "SelfAttention", "WeightLoader", "linear",
        ),
        "kernel_core.modeling",
    ),
    # Tensor-parallel layers and sharding rules (docs/distributed.md): what a model plugin shards with.
    **dict.fromkeys(
        (
            "SINGLE", "ColumnParallelLinear", "HeadShard", "ParallelLMHead", "RowParallelLinear", "TensorParallel",
            "TensorParallelMoE", "VocabParallelEmbedding", "expert_shard", "qkv_rows", "shard_experts", "shard_heads",
            "shard_low_rank_column", "shard_low_rank_row", "vocab_range",
        ),
        "kernel_core.modeling",
    ),
}

__all__ = [
    "PLUGIN_API_VERSION",
    "AttentionBackendSpec",
    "CacheManagerSpec",
    "ExecutorSpec",
    "ImplementationSpec",
    "LoRAKernelSpec",
    "ModelArchitectureSpec",
    "MoEKernelSpec",
    "PlatformSpec",
    "PluginKind",
    "SchedulerPolicySpec",
    "TunerSpec",
    "__version__",
    "hookimpl",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import a base class from its contract module the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
