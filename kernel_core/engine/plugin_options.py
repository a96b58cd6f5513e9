"""The engine's ``plugin_options``: checked against what is installed before anything is built,
then applied to every plugin the engine constructs (plugin API 1.6, :mod:`kernel_core.contracts.settings`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kernel_core.contracts.records import KERNEL_KINDS, PluginKind
from kernel_core.contracts.settings import PluginSettingsError, settings_model, validate_settings
from kernel_core.errors import UnknownPluginError
from kernel_core.plugins import PluginManager, Registration

log = logging.getLogger(__name__)

#: The kinds whose implementations the engine constructs, so options for them can take effect.
CONSTRUCTED_KINDS = (PluginKind.CACHE_MANAGER, PluginKind.SCHEDULER_POLICY, *KERNEL_KINDS, PluginKind.EXECUTOR)


def split_plugin_key(key: str) -> tuple[PluginKind, str]:
    """``"attention-backend.torch"`` → ``(PluginKind.ATTENTION_BACKEND, "torch")``; an unknown kind or a
    key not of the form ``KIND.NAME`` raises naming the option."""
    kind, dot, name = key.partition(".")
    if not dot or not name or "." in name:
        raise PluginSettingsError(f"--plugin-option {key}: expected KIND.NAME.KEY=VALUE, e.g. attention-backend.torch.bucket_bytes=65536")
    try:
        return PluginKind(kind), name
    except ValueError:
        kinds = ", ".join(k.value for k in CONSTRUCTED_KINDS)
        raise PluginSettingsError(f"--plugin-option {key}: unknown plugin kind {kind!r} (kinds taking options: {kinds})") from None


class PluginOptions:
    """Every ``plugin_options`` entry validated up front (kind, installed name, declared ``Settings``,
    keys and values), so a typo fails at start-up naming the option, before weights load."""

    def __init__(self, manager: PluginManager, options: Mapping[str, Mapping[str, Any]]) -> None:
        self.manager = manager
        self.options = {key: dict(values) for key, values in options.items()}
        self.used: set[str] = set()
        for key, values in self.options.items():
            self._check(key, values)

    def _check(self, key: str, values: Mapping[str, Any]) -> None:
        kind, name = split_plugin_key(key)
        if kind not in CONSTRUCTED_KINDS:
            kinds = ", ".join(k.value for k in CONSTRUCTED_KINDS)
            raise PluginSettingsError(f"--plugin-option {key}: the engine builds no {kind} plugin with options (kinds taking options: {kinds})")
        try:
            registration = self.manager.get(kind, name)
        except UnknownPluginError:
            installed = ", ".join(r.name for r in self.manager.registrations(kind)) or "none"
            raise PluginSettingsError(
                f"--plugin-option {key}: no {kind} plugin named {name!r} is installed (installed: {installed})"
            ) from None
        implementation = self.manager.load(registration)
        model = settings_model(implementation)
        if model is None:
            raise PluginSettingsError(
                f"--plugin-option {key}: the {kind} plugin {name!r} takes no settings "
                f"({implementation.__qualname__} declares no Settings)"
            )
        validate_settings(model, values, key)

    def create(self, registration: Registration, *args: Any, **kwargs: Any) -> Any:
        """The implementation ``registration`` names, built with its options (see
        :meth:`PluginManager.create`); remembered, so options for plugins never built are reported."""
        key = f"{registration.kind}.{registration.name}"
        self.used.add(key)
        return self.manager.create(registration, *args, options=self.options.get(key), **kwargs)

    def warn_unused(self) -> None:
        """A warning per option set for an installed plugin this engine did not select: not an
        error (one set of options may serve several machines), but not silent either."""
        for key in sorted(self.options.keys() - self.used):
            log.warning(
                "--plugin-option %s: the plugin is installed but this engine does not use it; its options are ignored",
                key,
            )
