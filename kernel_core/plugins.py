"""Plugin discovery, validation, fault isolation and selection.

Entry points in the group ``kernel_core`` are discovered once per process. Each names a module
holding hook implementations (see :mod:`kernel_core.hookspecs`). A plugin that fails to import,
returns an invalid record, targets an incompatible API or registers a name another plugin
already took is reported with its distribution and skipped; everything else loads. With
``KERNEL_CORE_STRICT_PLUGINS=1`` such a fault is fatal instead. Selection is by name or by
declared priority, never by load order; two records of one kind sharing a name, or a field the
kind declares unique (a tuner's ``peft_type``), are both reported and neither is used.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import importlib_metadata
import pluggy

import kernel_core
from kernel_core import api_version, hookspecs
from kernel_core.contracts.records import SPEC_BY_KIND, ImplementationSpec, PluginKind
from kernel_core.contracts.settings import instantiate
from kernel_core.errors import (
    DuplicatePluginError,
    PluginError,
    PluginLoadError,
    UnknownPluginError,
)

ENTRY_POINT_GROUP = "kernel_core"
ENV_ALLOW = "KERNEL_CORE_PLUGINS"
ENV_DENY = "KERNEL_CORE_DISABLE_PLUGINS"
ENV_STRICT = "KERNEL_CORE_STRICT_PLUGINS"

#: Registration hook name → the kind of record it returns.
REGISTRATION_HOOKS: dict[str, PluginKind] = {
    "kernel_core_platforms": PluginKind.PLATFORM,
    "kernel_core_tuners": PluginKind.TUNER,
    "kernel_core_scheduler_policies": PluginKind.SCHEDULER_POLICY,
    "kernel_core_cache_managers": PluginKind.CACHE_MANAGER,
    "kernel_core_attention_backends": PluginKind.ATTENTION_BACKEND,
    "kernel_core_moe_kernels": PluginKind.MOE_KERNEL,
    "kernel_core_lora_kernels": PluginKind.LORA_KERNEL,
    "kernel_core_model_architectures": PluginKind.MODEL_ARCHITECTURE,
    "kernel_core_executors": PluginKind.EXECUTOR,
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distribution:
    """The installed package a plugin came from."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class PluginStatus(str, enum.Enum):
    LOADED = "loaded"
    FAILED = "failed"
    NOT_ALLOWED = "not-allowed"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class PluginInfo:
    """One plugin (entry point) and what became of it."""

    name: str
    distribution: Distribution
    status: PluginStatus = PluginStatus.LOADED
    target_api: str | None = None
    error: str | None = None
    registrations: list[Registration] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Unique name under which the plugin is registered with pluggy."""
        return f"{self.distribution.name}:{self.name}"


@dataclass(eq=False)
class Registration:
    """One record a plugin registered, with its provenance."""

    spec: ImplementationSpec
    plugin: PluginInfo
    error: str | None = None

    @property
    def kind(self) -> PluginKind:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class PluginFault:
    """Why a plugin (or one of its records) was skipped."""

    plugin: str
    distribution: Distribution
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from {self.distribution}: {self.reason}"


def canonical_name(name: str) -> str:
    """Normalise a plugin or distribution name the way pip does (``A_b.c`` → ``a-b-c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def env_name_set(variable: str) -> frozenset[str] | None:
    """Names in a comma-separated environment variable; None when unset, empty when empty."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return frozenset(canonical_name(n) for n in value.split(",") if n.strip())


@functools.cache
def discover_entry_points() -> tuple[importlib_metadata.EntryPoint, ...]:
    """Every installed entry point of the ``kernel_core`` group, read once per process."""
    return tuple(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP))


class PluginManager:
    """Holds the loaded plugins and what they registered, keyed by (kind, name)."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.plugins: list[PluginInfo] = []
        self.faults: list[PluginFault] = []
        self._hooks = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._hooks.add_hookspecs(hookspecs)
        self._registry: dict[PluginKind, dict[str, list[Registration]]] = {
            kind: {} for kind in PluginKind
        }

    @classmethod
    def from_environment(cls) -> PluginManager:
        """A manager over every installed plugin, filtered and made strict by the environment."""
        manager = cls(strict=os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes"})
        manager.load_entry_points(
            discover_entry_points(), allow=env_name_set(ENV_ALLOW), deny=env_name_set(ENV_DENY) or frozenset()
        )
        return manager

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(
        self,
        entry_points: Iterable[importlib_metadata.EntryPoint],
        *,
        allow: frozenset[str] | None = None,
        deny: frozenset[str] = frozenset(),
    ) -> None:
        """Import and register each entry point that the allow- and deny-lists let through."""
        seen: set[str] = set()
        for ep in sorted(entry_points, key=lambda e: (e.dist.name if e.dist else "", e.name)):
            dist = Distribution(ep.dist.name, ep.dist.version) if ep.dist else Distribution("?", "?")
            names = {canonical_name(ep.name), canonical_name(dist.name)}
            seen |= names
            if allow is not None and not names & allow:
                self.plugins.append(PluginInfo(ep.name, dist, PluginStatus.NOT_ALLOWED))
                continue
            if names & deny:
                self.plugins.append(PluginInfo(ep.name, dist, PluginStatus.DISABLED))
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's fault
                info = PluginInfo(ep.name, dist)
                self.plugins.append(info)
                self._fail(info, f"importing {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self.register(module, name=ep.name, distribution=dist)
        for variable, names in ((ENV_ALLOW, allow or frozenset()), (ENV_DENY, deny)):
            for missing in sorted(names - seen):
                log.warning("%s names %r, but no installed kernel-core plugin has that name", variable, missing)

    def register(self, plugin: object, *, name: str, distribution: Distribution) -> PluginInfo:
        """Register one plugin object (usually a module) and collect its records.

        Used for entry points, and directly by tests and the SDK's isolated manager fixture.
        """
        info = PluginInfo(name, distribution)
        self.plugins.append(info)
        try:
            info.target_api = api_version.check_target(plugin, kernel_core.PLUGIN_API_VERSION)
            self._hooks.register(plugin, name=info.key)
            unknown = sorted(c.name for c in self._hooks.get_hookcallers(plugin) or () if not c.has_spec())
            if unknown:
                raise PluginError(f"implements unknown hook(s) {', '.join(unknown)}; see docs/plugins.md")
            registrations = self._collect(info)
        except Exception as exc:  # noqa: BLE001 - isolate every plugin fault
            if self._hooks.is_registered(plugin):
                self._hooks.unregister(plugin)
            self._fail(info, str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}")
            return info
        for registration in registrations:
            self._index(registration)
        return info

    def _collect(self, info: PluginInfo) -> list[Registration]:
        """Call the plugin's registration hooks; any invalid record rejects the whole plugin."""
        collected: list[Registration] = []
        for hook_name, kind in REGISTRATION_HOOKS.items():
            expected = SPEC_BY_KIND[kind]
            for impl in getattr(self._hooks.hook, hook_name).get_hookimpls():
                if impl.plugin_name != info.key:
                    continue
                for record in impl.function() or ():
                    if not isinstance(record, expected):
                        raise PluginError(
                            f"{hook_name}() returned {type(record).__name__} {record!r}, "
                            f"expected {expected.__name__}"
                        )
                    collected.append(Registration(record, info))
        info.registrations = collected
        return collected

    def _index(self, registration: Registration) -> None:
        """File the registration; a name or a unique field (``unique_fields``) it shares with
        another registration of its kind makes every holder unusable, reported on each."""
        kind_registry = self._registry[registration.kind]
        holders = kind_registry.setdefault(registration.name, [])
        holders.append(registration)
        clashes = [self._duplicate_message(holders)] if len(holders) > 1 else []
        for field_name in registration.spec.unique_fields:
            value = getattr(registration.spec, field_name)
            sharing = sorted(
                (r for named in kind_registry.values() for r in named if getattr(r.spec, field_name) == value),
                key=lambda r: (r.plugin.distribution.name, r.name),
            )
            if len(sharing) > 1:
                clashes.append(self._duplicate_message(sharing, field_name, value))
                holders = [*holders, *(r for r in sharing if r not in holders)]
        if clashes:
            message = "; ".join(clashes)
            for holder in holders:
                holder.error = message if holder.error is None else f"{holder.error}; {message}"
            self._fault(registration.plugin, message)

    @staticmethod
    def _duplicate_message(holders: list[Registration], field_name: str = "name", value: Any = None) -> str:
        first = holders[0]
        owners = [f"{h.name!r} of {h.plugin.distribution}" if field_name != "name" else str(h.plugin.distribution) for h in holders]
        listed = f"both {owners[0]} and {owners[1]}" if len(owners) == 2 else ", ".join(owners[:-1]) + f" and {owners[-1]}"
        claim = f"{first.name!r} is registered" if field_name == "name" else f"{field_name} {value!r} is claimed"
        return f"{first.kind} {claim} by {listed}; uninstall all but one, or disable the others with {ENV_DENY}"

    def _fail(self, info: PluginInfo, reason: str) -> None:
        info.status = PluginStatus.FAILED
        info.error = reason
        info.registrations = []
        self._fault(info, reason)

    def _fault(self, info: PluginInfo, reason: str) -> None:
        fault = PluginFault(info.name, info.distribution, reason)
        self.faults.append(fault)
        if self.strict:
            raise PluginLoadError(f"{fault} ({ENV_STRICT}=1 makes plugin faults fatal)")
        log.warning("skipping %s", fault)

    # -- queries and selection -------------------------------------------------------------

    def registrations(self, kind: PluginKind) -> list[Registration]:
        """Usable registrations of ``kind`` (duplicates excluded), sorted by name."""
        return [
            holders[0]
            for name, holders in sorted(self._registry[kind].items())
            if len(holders) == 1 and holders[0].error is None
        ]

    def get(self, kind: PluginKind, name: str) -> Registration:
        """The registration of ``kind`` called ``name``; a clear error when absent or ambiguous."""
        holders = self._registry[PluginKind(kind)].get(name, [])
        if len(holders) > 1:
            raise DuplicatePluginError(self._duplicate_message(holders))
        if holders and holders[0].error is not None:
            raise DuplicatePluginError(holders[0].error)
        if not holders:
            available = ", ".join(r.name for r in self.registrations(kind)) or "none"
            raise UnknownPluginError(
                f"no {kind} plugin named {name!r} is loaded (available: {available}); "
                "see `kcore plugins list`"
            )
        return holders[0]

    def select(
        self,
        kind: PluginKind,
        name: str | None = None,
        *,
        accept: Callable[[Registration], bool] | None = None,
    ) -> Registration:
        """The registration named ``name``, else the accepted one with the highest priority.

        Two accepted registrations sharing the highest priority are an error: the choice must
        be made by name, not by the order plugins happened to load in.
        """
        if name:
            return self.get(kind, name)
        candidates = [r for r in self.registrations(kind) if accept is None or accept(r)]
        if not candidates:
            raise UnknownPluginError(f"no usable {kind} plugin is installed; see `kcore plugins list`")
        top = max(r.spec.priority for r in candidates)
        best = [r for r in candidates if r.spec.priority == top]
        if len(best) > 1:
            names = ", ".join(f"{r.name} ({r.plugin.distribution})" for r in best)
            raise PluginError(f"{kind} plugins {names} share priority {top}; select one by name")
        return best[0]

    def load(self, registration: Registration) -> Any:
        """Import the implementation a registration names; errors name the distribution."""
        try:
            return registration.spec.load()
        except Exception as exc:  # noqa: BLE001 - report whatever the import raised
            raise PluginError(
                f"{registration.kind} {registration.name!r} from {registration.plugin.distribution}: "
                f"cannot import {registration.spec.implementation!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def create(self, registration: Registration, *args: Any, options: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """An instance of the implementation ``registration`` names, built as the engine builds it:
        with ``settings=`` its validated ``Settings`` (``options`` over the defaults) when it
        declares one (plugin API 1.6, :func:`kernel_core.contracts.settings.instantiate`)."""
        return instantiate(
            self.load(registration), *args, options=options, plugin=f"{registration.kind}.{registration.name}", **kwargs
        )

    # -- observers -------------------------------------------------------------------------

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of an observer hook; one that raises is logged and skipped."""
        for impl in getattr(self._hooks.hook, hook_name).get_hookimpls():
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception:  # noqa: BLE001 - an observer must never break the engine
                log.exception("observer %s of plugin %r raised; ignoring it", hook_name, impl.plugin_name)


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built on first use from the environment."""
    return PluginManager.from_environment()
