"""Which implementation of each kernel kind (attention backend, batched-adapter kernel, MoE kernel)
an engine gets on its platform, and why (:func:`select_kernel`); and which executor runs its ``tensor_parallel_size`` workers (:func:`select_executor`).

What a kernel plugin may run is declared in its record (``device_types``; for attention backends
also ``dtypes``, ``head_sizes`` and ``block_sizes``) and by its class's ``unavailable_reason()``
(a Triton kernel on a machine with no GPU and no ``TRITON_INTERPRET``). The one a setting names is
refused at start-up when it cannot run, naming it and what it cannot run; else the platform's
default (``Platform.default_kernel``), which gives way with a warning, where it is not installed
or cannot run, to the portable one (attention: ``torch``) or to the highest-priority one that runs
here (plugin API 1.6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kernel_core.contracts.platform import Platform
from kernel_core.contracts.records import PluginKind
from kernel_core.errors import KernelCoreError, PluginError, UnknownPluginError
from kernel_core.plugins import PluginManager, Registration

log = logging.getLogger(__name__)

#: A kind's portable implementation, which runs wherever torch does: what a platform's default
#: gives way to where that one is not installed or cannot run. A kind not here gives way to the
#: highest-priority implementation that runs here.
FALLBACKS = {PluginKind.ATTENTION_BACKEND: "torch"}


@dataclass(frozen=True)
class Needs:
    """What the engine will run the plugin on; None: not known yet, not checked."""

    device_type: str
    dtype: str | None = None
    head_size: int | None = None
    block_size: int | None = None

    def problem(self, spec: object) -> str | None:
        """Why the record ``spec`` cannot run this, naming the field; None when it can. A record
        without a field (or, for sizes, with an empty one) accepts any value of it."""
        checks = (
            ("device type", "device_types", self.device_type),
            ("dtype", "dtypes", self.dtype),
            ("head size", "head_sizes", self.head_size),
            ("block_size", "block_sizes", self.block_size),
        )
        for what, field, value in checks:
            allowed = getattr(spec, field, None)
            if value is None or not allowed or value in allowed:
                continue
            return f"{what} {value} is not among its {field} ({_listed(allowed)})"
        return None


def _listed(values: Iterable[object]) -> str:
    """Sorted, with runs of consecutive integers written as ranges: ``1-256``, not 256 numbers."""
    items = sorted(values)
    if not all(isinstance(item, int) for item in items):
        return ", ".join(map(str, items))
    runs: list[list[int]] = []
    for item in items:
        if runs and item == runs[-1][-1] + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


@dataclass(frozen=True)
class Choice:
    """The plugin an engine gets, and why (for its log and ``kcore plugins doctor``)."""

    registration: Registration
    reason: str


#: A kind's own check beyond :class:`Needs` (an MoE kernel's quantizations): a problem or None.
Check = Callable[[Registration], "str | None"]


def why_not(manager: PluginManager, registration: Registration, needs: Needs, check: Check | None = None) -> str | None:
    """Why ``registration`` cannot run here: its record, ``check``, then its class's
    ``unavailable_reason()`` (an import failure counts as one); None when it can."""
    problem = needs.problem(registration.spec) or (check(registration) if check else None)
    if problem is not None:
        return problem
    try:
        return manager.load(registration).unavailable_reason()
    except PluginError as exc:
        return str(exc)


def choose(
    manager: PluginManager,
    kind: PluginKind,
    *,
    setting: str,
    configured: str | None,
    platform: Platform,
    needs: Needs,
    default: str | None,
    default_reason: str,
    fallback: str | None = None,
    check: Check | None = None,
) -> Choice:
    """The plugin of ``kind`` named by ``setting`` (``configured``), else ``platform``'s
    ``default``, else ``fallback`` by name, else the highest-priority one that runs here."""
    where = f"the {platform.name} platform"
    if configured:
        registration = manager.get(kind, configured)  # not installed: names the installed ones
        problem = why_not(manager, registration, needs, check)
        if problem is not None:
            raise KernelCoreError(f"{setting} {configured!r} cannot run on this machine ({where}): {problem}")
        return Choice(registration, f"named by the {setting} setting")
    prefix = ""
    if default is not None:
        why = f"the {platform.name} platform's default ({default_reason})"
        try:
            registration = manager.get(kind, default)
        except UnknownPluginError:
            problem = "is not installed"
        else:
            reason = why_not(manager, registration, needs, check)
            if reason is None:
                return Choice(registration, why)
            problem = f"cannot run here: {reason}"
        if default == fallback:
            raise KernelCoreError(f"the portable {kind} {default!r} {problem}")
        instead = repr(fallback) if fallback else "the highest-priority one that runs here"
        log.warning("%s %r, %s's default, %s; using %s", kind, default, platform.name, problem, instead)
        prefix = f"{why}, but {default!r} {problem}, so "
    if fallback is not None:
        registration = manager.get(kind, fallback)
        problem = why_not(manager, registration, needs, check)
        if problem is not None:
            raise KernelCoreError(f"the portable {kind} {fallback!r} cannot run on {where}: {problem}")
        return Choice(registration, f"{prefix}the portable {fallback!r}")
    problems = {r.name: why_not(manager, r, needs, check) for r in manager.registrations(kind)}
    if not any(problem is None for problem in problems.values()):
        listed = "; ".join(f"{name}: {problem}" for name, problem in problems.items()) or "none installed"
        raise UnknownPluginError(f"no installed {kind} plugin runs on {where} ({listed})")
    registration = manager.select(kind, accept=lambda r: problems.get(r.name, "") is None)
    lead = prefix or f"the {platform.name} platform names no default, so "
    return Choice(registration, f"{lead}the highest-priority one that runs here ({registration.spec.priority})")


def select_kernel(
    manager: PluginManager,
    platform: Platform,
    kind: PluginKind,
    configured: str | None,
    needs: Needs | None = None,
    check: Check | None = None,
) -> Choice:
    """The implementation of ``kind`` (one of ``KERNEL_KINDS``) named by its setting (``kind.setting``;
    refused if it cannot run here), else the platform's default (``Platform.default_kernel``), else,
    where that one is not installed or cannot run, the kind's portable one (:data:`FALLBACKS`) or the
    highest-priority one that runs here. ``needs`` defaults to the platform's device type alone
    (``kcore plugins doctor``, which knows no model)."""
    default, reason = platform.default_kernel(kind)
    return choose(
        manager, kind, setting=kind.setting, configured=configured, platform=platform,
        needs=needs or Needs(platform.device_type), default=default, default_reason=reason,
        fallback=FALLBACKS.get(kind), check=check,
    )


#: The executor package a tensor_parallel_size above 1 needs when none installed runs it.
MULTIPROCESS_EXECUTOR = "kernel-core-executor-mp"


def select_executor(manager: PluginManager, configured: str | None, size: int) -> Registration:
    """The executor named by ``distributed_executor``, else the highest-priority one whose
    ``max_tensor_parallel_size`` admits ``size``; refused naming the setting and what to install."""

    def runs(registration: Registration) -> bool:
        limit = registration.spec.max_tensor_parallel_size
        return limit is None or size <= limit

    installed = ", ".join(
        f"{r.name} (up to {r.spec.max_tensor_parallel_size or 'any'})" for r in manager.registrations(PluginKind.EXECUTOR)
    ) or "none"
    if configured:
        registration = manager.get(PluginKind.EXECUTOR, configured)
        if not runs(registration):
            raise KernelCoreError(
                f"tensor_parallel_size {size}: distributed_executor {configured!r} runs at most "
                f"{registration.spec.max_tensor_parallel_size} worker(s); name another (installed: {installed}) or "
                f"install {MULTIPROCESS_EXECUTOR}"
            )
        return registration
    try:
        return manager.select(PluginKind.EXECUTOR, accept=runs)
    except UnknownPluginError:
        raise KernelCoreError(
            f"tensor_parallel_size {size}: no installed executor runs {size} workers (installed: {installed}); "
            f"install {MULTIPROCESS_EXECUTOR} (one process per rank) or set tensor_parallel_size 1"
            if size > 1 else f"no executor plugin is installed: install kernel-core-executor-uniproc (installed: {installed})"
        ) from None
