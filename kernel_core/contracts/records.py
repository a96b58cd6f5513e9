"""Typed records that registration hooks return.

A record names an implementation as a ``"module:attr"`` string instead of holding it, so
discovering every installed plugin imports no torch-heavy code; the implementation is
imported by :meth:`ImplementationSpec.load` only when it is selected.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
TARGET_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
#: Quantizations of expert weights an MoE kernel may consume besides unquantized weights.
MOE_QUANTIZATIONS = frozenset({"int8"})
#: The floating dtypes an engine may run a model in, by their torch names (no torch import here).
FLOAT_DTYPES = frozenset({"float32", "bfloat16", "float16"})


def import_target(target: str) -> Any:
    """Import ``"package.module:Attr.attr"`` and return the attribute."""
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return obj


class PluginKind(str, enum.Enum):
    """Every kind of thing a plugin may provide; one registration hook per kind."""

    PLATFORM = "platform"
    TUNER = "tuner"
    SCHEDULER_POLICY = "scheduler-policy"
    CACHE_MANAGER = "cache-manager"
    ATTENTION_BACKEND = "attention-backend"
    MOE_KERNEL = "moe-kernel"
    LORA_KERNEL = "lora-kernel"
    MODEL_ARCHITECTURE = "model-architecture"
    EXECUTOR = "executor"

    def __str__(self) -> str:
        return self.value

    @property
    def setting(self) -> str:
        """The engine setting that names this kind's implementation: ``attention_backend``,
        ``lora_kernel``, ``moe_kernel``."""
        return self.value.replace("-", "_")


#: The kinds whose implementation the engine selects per platform (a setting, else the platform's
#: default, else priority among those that run here; plugin API 1.6).
KERNEL_KINDS = (PluginKind.ATTENTION_BACKEND, PluginKind.LORA_KERNEL, PluginKind.MOE_KERNEL)


class ImplementationSpec(BaseModel):
    """What one plugin offers for one kind: enough to list and select it without importing it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[PluginKind]
    #: ``module:attr`` of the base class every implementation of this kind subclasses.
    contract: ClassVar[str]
    #: Fields besides ``name`` that no two registrations of this kind may share (a tuner's
    #: ``peft_type``): such a clash is reported like a duplicate name.
    unique_fields: ClassVar[tuple[str, ...]] = ()

    name: str = Field(pattern=NAME_PATTERN, description="Unique within its kind; used to select it.")
    description: str = Field(min_length=1, description="One line for `kcore plugins list`.")
    implementation: str = Field(pattern=TARGET_PATTERN, description="`module:attr` of the class.")
    priority: int = Field(default=0, description="Higher wins when no name is requested.")
    capabilities: frozenset[str] = Field(default=frozenset(), description="Feature flags.")

    def load(self) -> Any:
        """Import and return the implementation named by ``implementation``."""
        return import_target(self.implementation)

    @classmethod
    def load_contract(cls) -> type:
        """Import and return the base class implementations of this kind subclass."""
        return import_target(cls.contract)


class PlatformSpec(ImplementationSpec):
    """A hardware platform (CPU, CUDA, ROCm, XPU, ...); implementation subclasses ``Platform``."""

    kind: ClassVar[PluginKind] = PluginKind.PLATFORM
    contract: ClassVar[str] = "kernel_core.contracts.platform:Platform"


class TunerSpec(ImplementationSpec):
    """A PEFT method; implementation subclasses ``Tuner``."""

    kind: ClassVar[PluginKind] = PluginKind.TUNER
    contract: ClassVar[str] = "kernel_core.contracts.tuner:Tuner"
    unique_fields: ClassVar[tuple[str, ...]] = ("peft_type",)
    peft_type: str = Field(
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="The `peft_type` written to adapter_config.json, e.g. LORA.",
    )
    serving: str | None = Field(
        default=None,
        pattern=TARGET_PATTERN,
        description="`module:attr` of its `kernel_core.contracts.serving.AdapterServing` subclass: how the "
        "engine serves its adapters (plugin API 1.4, additive); None: its adapters are refused at load.",
    )

    def load_serving(self) -> type:
        """Import and return the serving class named by ``serving`` (which must be set)."""
        assert self.serving is not None, f"tuner {self.name!r} serves no adapters"
        return import_target(self.serving)


class SchedulerPolicySpec(ImplementationSpec):
    """A scheduling policy; implementation subclasses ``SchedulerPolicy``."""

    kind: ClassVar[PluginKind] = PluginKind.SCHEDULER_POLICY
    contract: ClassVar[str] = "kernel_core.contracts.scheduler:SchedulerPolicy"


class CacheManagerSpec(ImplementationSpec):
    """A KV-cache manager; implementation subclasses ``CacheManager``."""

    kind: ClassVar[PluginKind] = PluginKind.CACHE_MANAGER
    contract: ClassVar[str] = "kernel_core.contracts.cache:CacheManager"


class AttentionBackendSpec(ImplementationSpec):
    """An attention backend; implementation subclasses ``AttentionBackend``."""

    kind: ClassVar[PluginKind] = PluginKind.ATTENTION_BACKEND
    contract: ClassVar[str] = "kernel_core.contracts.attention:AttentionBackend"
    device_types: frozenset[str] = Field(
        default=frozenset({"cpu", "cuda", "xpu"}),
        description="torch device types the backend runs on.",
    )
    dtypes: frozenset[str] = Field(
        default=FLOAT_DTYPES,
        description="Model dtypes it computes, by torch name (plugin API 1.6); the engine refuses others at start-up.",
    )
    head_sizes: frozenset[int] = Field(
        default=frozenset(),
        description="Attention head sizes it computes (plugin API 1.6); empty: any.",
    )
    block_sizes: frozenset[int] = Field(
        default=frozenset(),
        description="KV-cache block sizes (the block_size setting) it reads (plugin API 1.6); empty: any.",
    )

    @field_validator("dtypes")
    @classmethod
    def _known_dtypes(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - FLOAT_DTYPES)
        if unknown or not value:
            raise ValueError(f"dtypes {sorted(value)}: each must be one of {sorted(FLOAT_DTYPES)}, at least one")
        return value


class MoEKernelSpec(ImplementationSpec):
    """A mixture-of-experts kernel; implementation subclasses ``MoEKernel``."""

    kind: ClassVar[PluginKind] = PluginKind.MOE_KERNEL
    contract: ClassVar[str] = "kernel_core.contracts.moe:MoEKernel"
    device_types: frozenset[str] = Field(
        default=frozenset({"cpu", "cuda", "xpu"}),
        description="torch device types the kernel runs on.",
    )
    quantizations: frozenset[str] = Field(
        default=frozenset(),
        description="Quantized expert weights its forward consumes besides unquantized ones, e.g. int8 "
        "(plugin API 1.3).",
    )

    @field_validator("quantizations")
    @classmethod
    def _known_quantizations(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - MOE_QUANTIZATIONS)
        if unknown:
            raise ValueError(f"unknown quantizations {unknown}; known: {sorted(MOE_QUANTIZATIONS)}")
        return value


class LoRAKernelSpec(ImplementationSpec):
    """A batched LoRA kernel for serving; implementation subclasses ``LoRAKernel``."""

    kind: ClassVar[PluginKind] = PluginKind.LORA_KERNEL
    contract: ClassVar[str] = "kernel_core.contracts.lora:LoRAKernel"
    device_types: frozenset[str] = Field(
        default=frozenset({"cpu", "cuda", "xpu"}),
        description="torch device types the kernel runs on.",
    )


class ModelArchitectureSpec(ImplementationSpec):
    """A model family; implementation subclasses ``ModelArchitecture``."""

    kind: ClassVar[PluginKind] = PluginKind.MODEL_ARCHITECTURE
    contract: ClassVar[str] = "kernel_core.contracts.model:ModelArchitecture"
    architectures: frozenset[str] = Field(
        min_length=1,
        description="Values of config.json `architectures` it runs, e.g. LlamaForCausalLM.",
    )


class ExecutorSpec(ImplementationSpec):
    """Where the model side runs (plugin API 1.7); implementation subclasses ``Executor``."""

    kind: ClassVar[PluginKind] = PluginKind.EXECUTOR
    contract: ClassVar[str] = "kernel_core.contracts.executor:Executor"
    max_tensor_parallel_size: int | None = Field(
        default=None, ge=1,
        description="Largest tensor_parallel_size it runs (1: in-process only); None: no limit of its own.",
    )


SPEC_BY_KIND: dict[PluginKind, type[ImplementationSpec]] = {
    cls.kind: cls
    for cls in (
        PlatformSpec,
        TunerSpec,
        SchedulerPolicySpec,
        CacheManagerSpec,
        AttentionBackendSpec,
        MoEKernelSpec,
        LoRAKernelSpec,
        ModelArchitectureSpec,
        ExecutorSpec,
    )
}
