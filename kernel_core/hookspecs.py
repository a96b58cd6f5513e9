"""Every hook a kernel-core plugin may implement, in one place.

Hooks are grouped by lifecycle phase. Registration hooks are called once per process, when
the plugin manager first collects what is installed; each returns an iterable of typed records
(see :mod:`kernel_core.contracts.records`) that name an implementation as ``"module:attr"`` so
that discovery imports nothing heavy. Observer hooks are called by the engine while it runs.

Hooks evolve only by adding arguments (an implementation may accept fewer than the spec), so a
plugin written against an older minor version of the plugin API keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from kernel_core.contracts.events import RequestAdded, RequestFinished, StepDone
from kernel_core.contracts.records import (
    AttentionBackendSpec,
    CacheManagerSpec,
    ExecutorSpec,
    LoRAKernelSpec,
    ModelArchitectureSpec,
    MoEKernelSpec,
    PlatformSpec,
    SchedulerPolicySpec,
    TunerSpec,
)

PROJECT_NAME = "kernel_core"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# Registration: what a plugin provides. Called once per process, not firstresult: every
# plugin's records are collected, validated and keyed by (kind, name).
# ---------------------------------------------------------------------------------------------


@hookspec
def kernel_core_platforms() -> Iterable[PlatformSpec]:
    """Return the hardware platforms this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. The platform chosen is the available one with the highest priority,
    or the one named by ``KERNEL_CORE_PLATFORM``; its implementation subclasses
    :class:`kernel_core.contracts.platform.Platform`.
    """


@hookspec
def kernel_core_tuners() -> Iterable[TunerSpec]:
    """Return the PEFT methods (tuners) this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. A tuner is selected by its name (``get_config("lora", ...)``) or by the
    ``peft_type`` of an ``adapter_config.json``; its implementation subclasses
    :class:`kernel_core.contracts.tuner.Tuner`.
    """


@hookspec
def kernel_core_scheduler_policies() -> Iterable[SchedulerPolicySpec]:
    """Return the scheduler policies this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. The engine uses the policy named by its ``scheduler_policy`` setting, or
    the highest-priority one; its implementation subclasses
    :class:`kernel_core.contracts.scheduler.SchedulerPolicy`.
    """


@hookspec
def kernel_core_cache_managers() -> Iterable[CacheManagerSpec]:
    """Return the KV-cache managers this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. The engine uses the manager named by its ``cache_manager`` setting, or
    the highest-priority one; its implementation subclasses
    :class:`kernel_core.contracts.cache.CacheManager`.
    """


@hookspec
def kernel_core_attention_backends() -> Iterable[AttentionBackendSpec]:
    """Return the attention backends this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. The engine uses the backend named by its ``attention_backend`` setting,
    else the platform's default; its implementation subclasses
    :class:`kernel_core.contracts.attention.AttentionBackend`.
    """


@hookspec
def kernel_core_moe_kernels() -> Iterable[MoEKernelSpec]:
    """Return the mixture-of-experts kernels this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. Mixture-of-experts layers use the kernel named by the ``moe_kernel``
    setting, or the highest-priority one whose record runs on the model's device and lists the
    ``moe_quantization`` asked for in ``quantizations``; its implementation subclasses
    :class:`kernel_core.contracts.moe.MoEKernel`.
    """


@hookspec
def kernel_core_lora_kernels() -> Iterable[LoRAKernelSpec]:
    """Return the batched LoRA kernels (for serving many adapters at once) this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. The engine uses the kernel named by its ``lora_kernel`` setting, or the
    highest-priority one that runs on the model's device; its implementation subclasses
    :class:`kernel_core.contracts.lora.LoRAKernel`.
    """


@hookspec
def kernel_core_model_architectures() -> Iterable[ModelArchitectureSpec]:
    """Return the model architectures this plugin can run.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters. A model folder is matched by the ``architectures`` list of its
    ``config.json``; the implementation subclasses
    :class:`kernel_core.contracts.model.ModelArchitecture`.
    """


@hookspec
def kernel_core_executors() -> Iterable[ExecutorSpec]:
    """Return the executors (where and on how many workers the model runs) this plugin provides.

    Called once per process when the plugin manager collects registrations; not firstresult.
    Takes no parameters (plugin API 1.7). The engine uses the executor named by its
    ``distributed_executor`` setting, else the highest-priority one whose
    ``max_tensor_parallel_size`` admits ``tensor_parallel_size``; its implementation subclasses
    :class:`kernel_core.contracts.executor.Executor`.
    """


# ---------------------------------------------------------------------------------------------
# Engine lifecycle observers: called by the engine while it serves. Not firstresult; return
# values are ignored. Each implementation is called in isolation: one that raises is logged
# with its distribution name and does not stop the engine or the other observers.
# ---------------------------------------------------------------------------------------------


@hookspec
def kernel_core_request_added(event: RequestAdded) -> None:
    """Observe a request entering the engine.

    Called once per request, right after it is queued and before it is first scheduled; not
    firstresult, the return value is ignored.

    :param event: the request's id, prompt length, adapter and arrival time.
    """


@hookspec
def kernel_core_request_finished(event: RequestFinished) -> None:
    """Observe a request leaving the engine, by any exit path.

    Called once per request after its resources are freed: stopped, length, aborted, timed out
    or failed (then ``event.error`` says why). Not firstresult; the return value is ignored.

    :param event: the request's id, finish reason, token counts, adapter and timings.
    """


@hookspec
def kernel_core_step_done(stats: StepDone) -> None:
    """Observe the end of one engine step.

    Called once per step, after sampled tokens are appended and finished requests retired; not
    firstresult, the return value is ignored.

    :param stats: the step number, queue sizes, scheduled tokens, preemptions, KV usage, time.
    """
