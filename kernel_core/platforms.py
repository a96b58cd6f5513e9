"""Choosing the hardware platform: the one forced by ``KERNEL_CORE_PLATFORM``, else the
available platform with the highest priority (CPU, with priority 0, is the fallback)."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kernel_core.contracts.records import PluginKind
from kernel_core.errors import PlatformNotAvailableError, PluginError
from kernel_core.plugins import PluginManager, Registration, get_plugin_manager

if TYPE_CHECKING:
    from kernel_core.contracts.platform import Platform

ENV_PLATFORM = "KERNEL_CORE_PLATFORM"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """What detection found for one installed platform."""

    registration: Registration
    available: bool
    detail: str


@dataclass(frozen=True)
class PlatformChoice:
    """The chosen platform, why, and what else was probed."""

    platform: Platform
    registration: Registration
    reason: str
    probes: tuple[Probe, ...]


def probe(manager: PluginManager, registration: Registration) -> tuple[type[Platform] | None, Probe]:
    """Import one platform and ask whether its hardware is present; never raises."""
    try:
        cls = manager.load(registration)
        if cls.is_available():
            return cls, Probe(registration, True, "available")
        return cls, Probe(registration, False, cls.unavailable_reason())
    except Exception as exc:  # noqa: BLE001 - a broken platform must not stop the others
        log.warning("platform %r could not be probed: %s", registration.name, exc)
        return None, Probe(registration, False, f"detection failed: {exc}")


def select_platform(manager: PluginManager | None = None, forced: str | None = None) -> PlatformChoice:
    """Pick the platform to run on; ``forced`` (default: ``$KERNEL_CORE_PLATFORM``) must exist."""
    manager = manager or get_plugin_manager()
    forced = forced if forced is not None else os.environ.get(ENV_PLATFORM, "").strip() or None
    if forced:
        try:
            registration = manager.get(PluginKind.PLATFORM, forced)
        except PluginError as exc:
            raise PlatformNotAvailableError(f"{ENV_PLATFORM}={forced}: {exc}") from None
        cls, found = probe(manager, registration)
        if cls is None or not found.available:
            raise PlatformNotAvailableError(
                f"{ENV_PLATFORM}={forced} was requested, but the {forced} platform is not "
                f"available on this machine: {found.detail}"
            )
        return PlatformChoice(cls(), registration, f"forced by {ENV_PLATFORM}={forced}", (found,))

    classes: dict[str, type[Platform]] = {}
    probes = []
    for registration in manager.registrations(PluginKind.PLATFORM):
        cls, found = probe(manager, registration)
        probes.append(found)
        if cls is not None and found.available:
            classes[registration.name] = cls
    if not classes:
        tried = "; ".join(f"{p.registration.name}: {p.detail}" for p in probes) or "none installed"
        raise PlatformNotAvailableError(
            f"no platform is available ({tried}); install kernel-core-platform-cpu"
        )
    registration = manager.select(PluginKind.PLATFORM, accept=lambda r: r.name in classes)
    reason = (
        f"highest priority ({registration.spec.priority}) among available platforms: "
        + ", ".join(sorted(classes))
    )
    return PlatformChoice(classes[registration.name](), registration, reason, tuple(probes))


@functools.cache
def current_platform() -> Platform:
    """The platform this process runs on, chosen on first use."""
    return select_platform().platform
