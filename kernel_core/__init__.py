"""kernel-core: one microkernel for parameter-efficient fine-tuning and LLM serving.

Everything that varies (PEFT methods, schedulers, KV-cache managers, attention backends, MoE
kernels, model architectures, hardware platforms) is a plugin found by entry point.
"""

from kernel_core.hookspecs import hookimpl

__version__ = "0.1.0"

#: Version of the plugin API (hook specs + contracts), semver. A plugin declares the version it
#: targets as ``kernel_core_api = "MAJOR.MINOR"`` in its entry-point module; a plugin fits when
#: its major equals ours and its minor is not newer.
PLUGIN_API_VERSION = "1.0.0"

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
