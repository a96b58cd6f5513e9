"""kernel-core: one microkernel for parameter-efficient fine-tuning and LLM serving.

Everything that varies (PEFT methods, schedulers, KV-cache managers, attention backends, MoE
kernels, model architectures, hardware platforms) is a plugin found by entry point.
"""

from typing import TYPE_CHECKING, Any

from kernel_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from kernel_core.llm import LLM
    from kernel_core.sampling_params import SamplingParams

__version__ = "0.1.0"

#: Version of the plugin API (hook specs + contracts), semver. A plugin declares the version it
#: targets as ``kernel_core_api = "MAJOR.MINOR"`` in its entry-point module; a plugin fits when
#: its major equals ours and its minor is not newer.
PLUGIN_API_VERSION = "1.7.0"

__all__ = ["LLM", "PLUGIN_API_VERSION", "SamplingParams", "__version__", "hookimpl"]

_LAZY = {"LLM": "kernel_core.llm", "SamplingParams": "kernel_core.sampling_params"}


def __getattr__(name: str) -> Any:
    """Import ``LLM`` (torch, transformers) on first use: plugins import this package too."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernel_core' has no attribute {name!r}")
