"""Adapter configs by method name: the tuner plugins registered through ``kernel_core_tuners``.

``get_config("lora", r=8)`` builds a config; :func:`config_from_dict` reads PEFT's
``adapter_config.json`` by its ``peft_type``. A new method is a plugin: nothing here lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from kernel_core.contracts.records import PluginKind, TunerSpec
from kernel_core.contracts.tuner import Tuner, BaseTunerConfig
from kernel_core.errors import InvalidAdapterConfigError, UnknownPluginError
from kernel_core.plugins import PluginManager, get_plugin_manager


@dataclass(frozen=True)
class Method:
    """One installed PEFT method: its record and an instance of its tuner."""

    spec: TunerSpec
    tuner: Tuner

    @property
    def config_class(self) -> type[BaseTunerConfig]:
        return self.tuner.config_class


def get_method(name: str, manager: PluginManager | None = None) -> Method:
    """The method registered as ``name`` or with PEFT type ``name``, in any case (``"ia3"``,
    ``"IA3"``, ``"lora"``, ``"LORA"``), as PEFT's ``PeftType`` values are upper-case."""
    manager = manager or get_plugin_manager()
    registrations = manager.registrations(PluginKind.TUNER)
    wanted = name.lower()
    for registration in registrations:
        spec = registration.spec
        assert isinstance(spec, TunerSpec)
        if wanted in (spec.name, spec.peft_type.lower()):
            return Method(spec, manager.create(registration))
    installed = ", ".join(f"{r.name} ({r.spec.peft_type})" for r in registrations if isinstance(r.spec, TunerSpec))
    raise UnknownPluginError(
        f"no installed PEFT method is named or has peft_type {name!r} (installed tuners: {installed or 'none'}); "
        f"`kcore install kernel-core-{wanted.replace('_', '-')}` adds it where such a plugin is published, "
        "see `kcore plugins list` for what is installed and why a plugin did not load"
    )


def method_of(config: BaseTunerConfig, manager: PluginManager | None = None) -> Method:
    """The installed method whose config class ``config`` is."""
    manager = manager or get_plugin_manager()
    for registration in manager.registrations(PluginKind.TUNER):
        method = get_method(registration.name, manager)
        if type(config) is method.config_class:
            return method
    raise InvalidAdapterConfigError(f"{type(config).__name__} belongs to no installed PEFT method")


def get_config(method: str, **fields: Any) -> BaseTunerConfig:
    """A validated config of ``method``; a bad field raises naming it."""
    config_class = get_method(method).config_class
    return validated(config_class, lambda: config_class(**fields))


def config_from_dict(data: Mapping[str, Any]) -> BaseTunerConfig:
    """A config from PEFT's ``adapter_config.json`` contents, chosen by ``peft_type``."""
    peft_type = data.get("peft_type")
    if not isinstance(peft_type, str):
        raise InvalidAdapterConfigError("adapter config has no 'peft_type' string saying which method wrote it")
    config_class = get_method(peft_type).config_class
    return validated(config_class, lambda: config_class.from_dict(data))


def config_to_dict(config: BaseTunerConfig) -> dict[str, Any]:
    """``adapter_config.json`` contents: the config's fields and its method's ``peft_type``."""
    return {"peft_type": method_of(config).spec.peft_type, **config.to_dict()}


def validated(config_class: type[BaseTunerConfig], build: Any) -> BaseTunerConfig:
    """Run ``build`` and turn pydantic's error into one that names each bad field."""
    try:
        return build()
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<config>'}: {error['msg']} (got {error.get('input')!r})"
            for error in exc.errors()
        )
        raise InvalidAdapterConfigError(f"invalid {config_class.__name__}: {problems}") from None
