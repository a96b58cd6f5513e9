"""Injection's refusals: a module the method cannot take is named with the method's own reason."""

from __future__ import annotations

import pytest

from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft import get_config, get_peft_model
from kernel_core.plugins import Distribution, PluginManager
from kernel_core_sdk.tiny_models import tiny_llama

from . import toy_tuner
from .toy_tuner import ToyLayer


@pytest.fixture(autouse=True)
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = PluginManager.from_environment()
    manager.register(toy_tuner, name="toy", distribution=Distribution("kc-toy", "1.0"))
    monkeypatch.setattr("kernel_core.peft.config.get_plugin_manager", lambda: manager)


@pytest.mark.parametrize("second_adapter", [False, True], ids=["wrap", "update_layer"])
def test_a_value_error_from_the_method_names_the_module_and_keeps_the_reason(
    second_adapter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin refusing a module's shape with a plain ValueError (RoAd's group_size, BOFT's
    blocks) reaches the user as the module's name, the method and that reason, not a traceback."""
    update_layer = ToyLayer.update_layer

    def refusing(self: ToyLayer, adapter_name: str, config: BaseTunerConfig) -> None:
        if adapter_name == "second" or not second_adapter:
            if (config.module_name or "").endswith("layers.1.mlp.down_proj"):
                raise ValueError("in_features=64 is not a multiple of 48")
        update_layer(self, adapter_name, config)

    monkeypatch.setattr(ToyLayer, "update_layer", refusing)
    config = get_config("toy", target_modules=["q_proj", "down_proj"])
    expected = r"toy cannot adapt module 'model\.layers\.1\.mlp\.down_proj': in_features=64 is not a multiple of 48"
    if not second_adapter:
        with pytest.raises(InvalidAdapterConfigError, match=expected):
            get_peft_model(tiny_llama(), config)
        return
    model = get_peft_model(tiny_llama(), config)
    before = {name: type(module) for name, module in model.named_modules()}
    with pytest.raises(InvalidAdapterConfigError, match=expected):  # k_proj wrapped new, then refused
        model.add_adapter("second", get_config("toy", target_modules=["k_proj", "down_proj"]))
    # the refused adapter left nothing behind: no layer holds it, no module changed, no config
    assert {name: type(module) for name, module in model.named_modules()} == before
    assert all("second" not in layer.adapter_names for layer in model.modules() if isinstance(layer, ToyLayer))
    assert list(model.peft_config) == ["default"]
    model.add_adapter("second", get_config("toy", target_modules=["q_proj"]))  # and the name is free again
