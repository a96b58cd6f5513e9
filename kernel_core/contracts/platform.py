"""The contract a hardware platform plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kernel_core.contracts.records import PluginKind


@dataclass(frozen=True)
class MemoryInfo:
    """Device memory in bytes, as the platform sees it right now."""

    total_bytes: int
    free_bytes: int


class LinearPolicy:
    """How a platform computes a model's projections, ``x @ weight.T + bias``: the GEMM every layer
    calls through :func:`kernel_core.modeling.linear`. Hardware choices (which library, which weight
    layout, per shape and dtype) live in the platform plugin that returns a subclass from
    :meth:`Platform.linear_policy`, not in the core. This base class is the core's default:
    ``F.linear`` on the weights as loaded. Plugin API 1.5.

    A policy may keep weights in its own layout: :meth:`prepare` is called once per projection weight
    at load and its result replaces the loaded tensor (no second copy), so :meth:`linear` must accept
    what :meth:`prepare` returns as well as plain ``[out, in]`` tensors (weights a model keeps itself).
    A prepared weight keeps the loaded one's ``shape``, ``dtype`` and ``device``; its data is read
    only through :meth:`linear`.
    """

    #: Shown by ``kcore platform``: which GEMM the engine's projections run.
    name: str = "F.linear"

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """The tensor a layer keeps for the ``[out, in]`` ``weight`` (default: ``weight`` itself)."""
        return weight

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ weight.T + bias`` for ``x`` ``[..., in]``, as a contiguous ``[..., out]`` tensor."""
        return F.linear(x, weight, bias)


class Platform(ABC):
    """One kind of hardware: how to detect it, and what the engine needs to know to use it.

    ``is_available`` must have no side effects: it may be called for every installed platform
    on every start, on machines where that hardware (or its driver) is absent.
    """

    name: ClassVar[str]
    device_type: ClassVar[str]
    default_attention_backend: ClassVar[str] = "torch"
    #: Why the default is what it is on this machine, shown by ``kcore plugins doctor``.
    default_attention_reason: ClassVar[str] = "the portable backend"
    #: The LoRA kernel and MoE kernel an engine gets on this platform when the ``lora_kernel`` /
    #: ``moe_kernel`` setting names none (plugin API 1.6); None: the highest-priority one that runs
    #: here. A default not installed, or unable to run here, gives way to that with a warning. The
    #: reasons say why the default is what it is, for ``kcore plugins doctor``.
    default_lora_kernel: ClassVar[str | None] = None
    default_lora_reason: ClassVar[str] = ""
    default_moe_kernel: ClassVar[str | None] = None
    default_moe_reason: ClassVar[str] = ""

    def default_kernel(self, kind: PluginKind) -> tuple[str | None, str]:
        """(name or None, reason) of this platform's default for one of ``kernel_core.contracts.records.KERNEL_KINDS``, so
        the engine selects every kernel kind the same way without naming one."""
        defaults = {
            PluginKind.ATTENTION_BACKEND: (self.default_attention_backend, self.default_attention_reason),
            PluginKind.LORA_KERNEL: (self.default_lora_kernel, self.default_lora_reason),
            PluginKind.MOE_KERNEL: (self.default_moe_kernel, self.default_moe_reason),
        }
        return defaults.get(kind, (None, ""))

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this hardware is usable in this process, without initialising it."""

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why :meth:`is_available` is False, for error messages and ``kcore platform``.

        Called only when :meth:`is_available` returned False.
        """
        return f"no {cls.name} device is visible to torch"

    @abstractmethod
    def device_count(self) -> int:
        """How many devices of this kind the process can see."""

    @abstractmethod
    def device_name(self, index: int = 0) -> str:
        """A human-readable name of device ``index``, for ``kcore platform``; IndexError when
        there is no such device."""

    @abstractmethod
    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """Floating dtypes the engine may run models in, preferred first."""

    @abstractmethod
    def distributed_backend(self) -> str:
        """The ``torch.distributed`` backend for collectives on this hardware."""

    @abstractmethod
    def memory_info(self, index: int = 0) -> MemoryInfo:
        """Total and free memory of device ``index``."""

    def linear_policy(self) -> LinearPolicy:
        """The GEMM policy the engine installs when it builds on this platform (plugin API 1.5);
        default: :class:`LinearPolicy`, plain ``F.linear``."""
        return LinearPolicy()

    def device(self, index: int = 0) -> torch.device:
        """The torch device to place tensors on."""
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, index)
