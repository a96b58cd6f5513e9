"""Configs by method name, and PEFT's adapter_config.json read leniently but never wrongly."""

from __future__ import annotations

import warnings

import pytest

from kernel_core.errors import InvalidAdapterConfigError, UnknownPluginError
from kernel_core.peft import config_from_dict, config_to_dict, get_config, get_method


def test_get_config_builds_the_method_config() -> None:
    config = get_config("lora", r=16, lora_alpha=32, target_modules="all-linear")
    assert type(config).__name__ == "LoraConfig" and (config.r, config.lora_alpha) == (16, 32)
    assert get_method("LORA").spec.name == "lora"  # by PEFT type too


def test_unknown_method_lists_the_installed_ones() -> None:
    with pytest.raises(UnknownPluginError, match=r"named or has peft_type 'loar' \(installed tuners: .*lora \(LORA\)"):
        get_config("loar")


@pytest.mark.parametrize("name", ["lora", "LORA", "LoRA", "Lora"])
def test_method_names_and_peft_types_are_case_insensitive(name: str) -> None:
    assert get_method(name).spec.name == "lora"
    assert type(get_config(name, target_modules=["q_proj"])).__name__ == "LoraConfig"


def test_a_file_of_a_method_no_plugin_provides_says_how_to_get_it() -> None:
    with pytest.raises(UnknownPluginError) as error:  # a peft_type no plugin will claim
        config_from_dict({"peft_type": "KC_UNWRITTEN_METHOD", "r": 8, "target_modules": ["q_proj"]})
    message = str(error.value)
    assert "'KC_UNWRITTEN_METHOD'" in message and "installed tuners: " in message and "lora (LORA)" in message
    assert "`kcore install kernel-core-kc-unwritten-method`" in message


def test_config_writes_only_the_keys_its_method_declares() -> None:
    """LoRA's PEFT config has the optional target filters, so its file does; a method whose PEFT
    config lacks them (IA3) leaves them out by not inheriting the mixins."""
    data = config_to_dict(get_config("lora", target_modules=["q_proj"]))
    assert {"exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save"} <= set(data)


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": "eight"}, "r"), ({"lora_dropout": 2.0}, "lora_dropout"), ({"bias": "some"}, "bias"),
     ({"rank_pattern": {"q_proj": 0}}, "rank_pattern.q_proj"), ({"init_lora_weights": "magic"}, "init_lora_weights"),
     ({"surely_not_a_field": 1}, "surely_not_a_field")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid LoraConfig: {culprit}:"):
        get_config("lora", **fields)


def test_layer_filters_need_a_list_of_targets() -> None:
    with pytest.raises(InvalidAdapterConfigError, match="need target_modules as a list"):
        get_config("lora", target_modules=".*q_proj", layers_to_transform=[0])
    with pytest.raises(InvalidAdapterConfigError, match="layers_pattern needs layers_to_transform"):
        get_config("lora", target_modules=["q_proj"], layers_pattern="layers")


def test_round_trip_through_dict() -> None:
    config = get_config("lora", r=4, target_modules=["q_proj"], rank_pattern={"q": 2}, use_dora=True)
    data = config_to_dict(config)
    assert data["peft_type"] == "LORA"
    assert config_from_dict(data) == config


def test_unknown_keys_are_left_out_with_one_warning() -> None:
    data = config_to_dict(get_config("lora", target_modules=["q_proj"]))
    data |= {"peft_version": "9.9", "megatron_core": "megatron.core", "loftq_config": {}, "eva_config": None,
             "use_qalora": False, "layer_replication": [[0, 2]], "future_knob": 3}
    with pytest.warns(UserWarning, match=r"ignoring .*: future_knob=3, layer_replication=\[\[0, 2\]\]$"):
        config = config_from_dict(data)
    assert config.target_modules == ["q_proj"]


def test_switched_off_peft_features_load_silently() -> None:
    data = config_to_dict(get_config("lora", target_modules=["q_proj"])) | {"qalora_group_size": 16, "lora_bias": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_dict(data)


def test_config_dict_must_say_its_method() -> None:
    with pytest.raises(InvalidAdapterConfigError, match="no 'peft_type'"):
        config_from_dict({"r": 8})
    with pytest.raises(UnknownPluginError, match="'NO_SUCH_METHOD'"):  # a peft_type no plugin claims
        config_from_dict({"peft_type": "NO_SUCH_METHOD"})
    with pytest.raises(InvalidAdapterConfigError, match="invalid LoraConfig: r:"):
        config_from_dict({"peft_type": "LORA", "r": [1]})
