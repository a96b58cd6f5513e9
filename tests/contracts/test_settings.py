"""Plugin settings (plugin API 1.6): a class declaring ``Settings`` is built with ``settings=`` its
validated instance, defaults included; one without is built exactly as before; a bad option is
refused naming ``--plugin-option KIND.NAME.KEY=VALUE``."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel, Field, ValidationError

from kernel_core.contracts.settings import (
    PluginSettings,
    PluginSettingsError,
    describe_settings,
    instantiate,
    settings_model,
)


class BlockSettings(PluginSettings):
    block_m: int = Field(default=32, ge=1, description="Rows per program.")
    tag: str = "x"


class WithSettings:
    Settings: ClassVar[type[PluginSettings]] = BlockSettings

    def __init__(self, size: int = 0, *, settings: BlockSettings) -> None:
        self.size, self.settings = size, settings


class WithoutSettings:
    def __init__(self, size: int = 0) -> None:
        self.size = size


def test_settings_are_frozen_and_refuse_unknown_keys() -> None:
    settings = BlockSettings()
    with pytest.raises(ValidationError):
        settings.block_m = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        BlockSettings(block_n=3)


def test_a_class_with_settings_gets_them_defaults_included() -> None:
    built = instantiate(WithSettings, 7)
    assert (built.size, built.settings) == (7, BlockSettings())
    assert instantiate(WithSettings, options={"block_m": 64}).settings.block_m == 64


def test_a_class_without_settings_is_built_as_before() -> None:
    assert instantiate(WithoutSettings, 3).size == 3
    with pytest.raises(PluginSettingsError, match=r"--plugin-option lora-kernel.plain: the plugin takes no settings"):
        instantiate(WithoutSettings, options={"block_m": 1}, plugin="lora-kernel.plain")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_m": 0}, r"--plugin-option lora-kernel.t.block_m=0: Input should be greater than or equal to 1"),
        ({"block_m": "big"}, r"--plugin-option lora-kernel.t.block_m=big: Input should be a valid integer"),
        ({"block_n": 4}, r"--plugin-option lora-kernel.t.block_n=4: no such setting \(settings: block_m, tag\)"),
    ],
)
def test_a_bad_option_names_it_and_why(options: dict, message: str) -> None:
    with pytest.raises(PluginSettingsError, match=message):
        instantiate(WithSettings, options=options, plugin="lora-kernel.t")


def test_settings_must_be_a_plugin_settings() -> None:
    class Loose(BaseModel):
        block_m: int = 1

    class Wrong:
        Settings = Loose

    with pytest.raises(PluginSettingsError, match="Wrong.Settings must subclass .*PluginSettings"):
        settings_model(Wrong)
    assert settings_model(WithoutSettings) is None


def test_describe_lists_field_type_default_description() -> None:
    assert describe_settings(BlockSettings) == [
        {"field": "block_m", "type": "int", "default": "32", "description": "Rows per program."},
        {"field": "tag", "type": "str", "default": "x", "description": ""},
    ]
