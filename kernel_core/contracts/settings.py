"""Settings a plugin takes (plugin API 1.6): how an engine option reaches a plugin's constructor.

An implementation class of any kind may declare ``Settings: ClassVar[type[PluginSettings]]``, a
pydantic model of its tunables with a default for every field. The engine then constructs it with
one extra keyword, ``settings=`` an instance of that model validated from the engine's
``plugin_options["<kind>.<name>"]`` (``--plugin-option KIND.NAME.KEY=VALUE`` on the command line),
always, with the defaults when no option is given. A class without ``Settings`` is constructed
as before, with no ``settings`` keyword.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kernel_core.errors import PluginError

__all__ = ["PluginSettings", "PluginSettingsError", "describe_settings", "instantiate", "settings_model", "validate_settings"]


class PluginSettings(BaseModel):
    """Base of a plugin's ``Settings``: unknown keys are refused (a typo must not be ignored) and a
    validated instance cannot change under the plugin that holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSettingsError(PluginError, ValueError):
    """A plugin option that cannot apply: unknown kind or plugin, a plugin without settings, an
    unknown key or a bad value. The message names the option."""


def settings_model(implementation: type) -> type[PluginSettings] | None:
    """The ``Settings`` model ``implementation`` declares, or None when it takes no settings."""
    model = getattr(implementation, "Settings", None)
    if model is None:
        return None
    if not (isinstance(model, type) and issubclass(model, PluginSettings)):
        raise PluginSettingsError(
            f"{implementation.__qualname__}.Settings must subclass kernel_core.contracts.settings.PluginSettings"
        )
    return model


def _shown(value: Any) -> str:
    """A value as it would be written after ``KEY=`` on the command line."""
    try:
        return value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def validate_settings(model: type[PluginSettings], options: Mapping[str, Any], plugin: str) -> PluginSettings:
    """``model`` built from ``options``; a bad one raises naming ``--plugin-option PLUGIN.KEY=VALUE``
    (``plugin`` is ``"<kind>.<name>"``) and pydantic's reason."""
    try:
        return model(**options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(map(str, error["loc"]))
            given = f"={_shown(options[key])}" if key in options else ""
            reason = error["msg"]
            if error["type"] == "extra_forbidden":
                reason = f"no such setting (settings: {', '.join(model.model_fields) or 'none'})"
            problems.append(f"--plugin-option {plugin}.{key}{given}: {reason}")
        raise PluginSettingsError("; ".join(problems)) from None


def instantiate(
    implementation: type, *args: Any, options: Mapping[str, Any] | None = None, plugin: str = "", **kwargs: Any
) -> Any:
    """Construct ``implementation`` as the engine does: with ``settings=`` its validated ``Settings``
    (defaults where ``options`` says nothing) when it declares one, else exactly as ``(*args, **kwargs)``.
    ``plugin`` (``"<kind>.<name>"``) names it in errors."""
    model = settings_model(implementation)
    if model is None:
        if options:
            raise PluginSettingsError(
                f"--plugin-option {plugin or implementation.__qualname__}: the plugin takes no settings "
                f"({implementation.__qualname__} declares no Settings)"
            )
        return implementation(*args, **kwargs)
    settings = validate_settings(model, options or {}, plugin or implementation.__qualname__)
    return implementation(*args, settings=settings, **kwargs)


def describe_settings(model: type[PluginSettings]) -> list[dict[str, str]]:
    """One row per field (name, type, default, description), for ``kcore plugins doctor``."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        default = "(required)" if field.is_required() else _shown(field.get_default(call_default_factory=True))
        rows.append({"field": name, "type": kind, "default": default, "description": field.description or ""})
    return rows
