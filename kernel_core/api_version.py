"""Which plugin API versions fit this kernel-core (semver: same major, minor not newer)."""

from __future__ import annotations

import re

from kernel_core.errors import IncompatiblePluginError

API_ATTRIBUTE = "kernel_core_api"
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def parse(version: str) -> tuple[int, int]:
    """``"1.2"`` or ``"1.2.3"`` → ``(1, 2)``; anything else is a ValueError naming it."""
    match = _VERSION.match(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{version!r} is not a plugin API version like '1.0'")
    return int(match.group(1)), int(match.group(2))


def fitting_range(provided: str) -> str:
    """Human-readable range of targets that fit ``provided``, e.g. ``1.0 to 1.3``."""
    major, minor = parse(provided)
    return f"{major}.0" if minor == 0 else f"{major}.0 to {major}.{minor}"


def check_target(plugin: object, provided: str) -> str:
    """Return the API version ``plugin`` declares, or raise if it is missing or does not fit."""
    target = getattr(plugin, API_ATTRIBUTE, None)
    if target is None:
        raise IncompatiblePluginError(
            f"declares no plugin API version: set {API_ATTRIBUTE} = \"{fitting_range(provided).split()[-1]}\" "
            "in its entry-point module"
        )
    try:
        major, minor = parse(target)
    except ValueError as exc:
        raise IncompatiblePluginError(f"{API_ATTRIBUTE}: {exc}") from None
    have_major, have_minor = parse(provided)
    if major != have_major or minor > have_minor:
        raise IncompatiblePluginError(
            f"targets plugin API {target}, but this kernel-core provides {provided}; "
            f"plugins targeting {fitting_range(provided)} fit"
        )
    return target
