"""The tuner authoring seams of plugin API 1.4, through a toy tuner: a layer's input transformed
by ``adapter_input`` (alone and in mixed batches), the module's name reaching its layer through
``for_module``, per-architecture default targets (or the model's own), the model-level hooks around
injection, and state a method keeps once per model saved, loaded and deleted with the adapter,
trained with it when it requires grad."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kernel_core.contracts.tuner import BASE_ADAPTER
from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core.plugins import Distribution, PluginManager
from kernel_core_sdk.tiny_models import tiny_llama, token_ids

from . import toy_tuner
from .toy_tuner import ToyConfig, ToyLayer, ToyTuner


@pytest.fixture(autouse=True)
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = PluginManager.from_environment()
    manager.register(toy_tuner, name="toy", distribution=Distribution("kc-toy", "1.0"))
    monkeypatch.setattr("kernel_core.peft.config.get_plugin_manager", lambda: manager)
    ToyTuner.calls.clear()


def _randomised(layer: ToyLayer, seed: int, *names: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            layer.toy_scale[name].copy_(torch.rand(layer.toy_scale[name].shape, generator=generator) + 0.5)


@pytest.mark.parametrize("module_name", ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"])
def test_adapter_input_changes_what_the_base_layer_sees(module_name: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    config = ToyConfig(input_modules=["down_proj"]).for_module(module_name)
    layer = ToyTuner().wrap(base, "a", config)
    layer.update_layer("b", config)
    _randomised(layer, 1, "a", "b")
    x = torch.randn(5, 3, 6)
    on_input = module_name.endswith("down_proj")

    def alone(name: str) -> torch.Tensor:
        scale = layer.toy_scale[name]
        return base(x * scale) if on_input else base(x) * scale

    with torch.no_grad():
        assert torch.equal(layer(x), alone("a"))
        rows = ["b", BASE_ADAPTER, "a", "b", "a"]
        layer.row_adapters = rows
        mixed = layer(x)
        layer.row_adapters = None
        expected = {"a": alone("a"), "b": alone("b"), BASE_ADAPTER: base(x)}
        for i, name in enumerate(rows):
            torch.testing.assert_close(mixed[i], expected[name][i], rtol=0, atol=1e-6)


def test_each_layer_learns_its_module_through_its_config() -> None:
    config = get_config("toy", target_modules=["q_proj", "down_proj"], input_modules=["down_proj"])
    model = get_peft_model(tiny_llama(), config)
    layers = {name: module for name, module in model.model.named_modules() if isinstance(module, ToyLayer)}
    assert layers and all(layer.module_names["default"] == name for name, layer in layers.items())
    for name, layer in layers.items():
        size = layer.toy_scale["default"].shape[0]
        assert size == (layer.base_layer.in_features if name.endswith("down_proj") else layer.base_layer.out_features)
    assert model.peft_config["default"].module_name is None


def test_missing_targets_come_from_the_method_table_by_model_type() -> None:
    model = get_peft_model(tiny_llama(), get_config("toy"))
    assert model.peft_config["default"].target_modules == ["q_proj", "down_proj"]
    wrapped = sorted({name.rsplit(".", 1)[-1] for name, m in model.model.named_modules() if isinstance(m, ToyLayer)})
    assert wrapped == ["down_proj", "q_proj"]


def test_a_model_type_without_defaults_is_named() -> None:
    base = tiny_llama()
    base.config.model_type = "made_up"
    with pytest.raises(InvalidAdapterConfigError, match=r"toy has no default target_modules for model type 'made_up' \(it has defaults for: llama\); set target_modules"):
        get_peft_model(base, get_config("toy"))


def test_default_targets_may_come_from_the_model_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Tuner.default_targets(model)``, when not None, is what a config without targets gets,
    whatever the model type (trainable tokens: the input embedding's name)."""
    monkeypatch.setattr(ToyTuner, "default_targets", lambda self, model: f"model.layers.{model.config.num_hidden_layers - 1}.self_attn.q_proj")
    base = tiny_llama()
    base.config.model_type = "made_up"
    model = get_peft_model(base, get_config("toy"))
    assert model.peft_config["default"].target_modules == "model.layers.1.self_attn.q_proj"
    assert [name for name, m in model.model.named_modules() if isinstance(m, ToyLayer)] == ["model.layers.1.self_attn.q_proj"]


def test_hooks_run_around_injection_and_their_config_is_kept() -> None:
    model = get_peft_model(tiny_llama(), get_config("toy", target_modules=["q_proj"]))
    assert [call for call, _ in ToyTuner.calls] == ["before", "after"]
    assert ToyTuner.calls[1][1] == [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    assert model.peft_config["default"].init == 2.0  # what before_inject returned is the config used
    layer = model.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert torch.equal(layer.toy_scale["default"], torch.full_like(layer.toy_scale["default"], 2.0))


def test_state_kept_once_per_model_is_saved_loaded_and_deleted_with_the_adapter(tmp_path: Path) -> None:
    model = get_peft_model(tiny_llama(), get_config("toy", target_modules=["q_proj"]))
    with torch.no_grad():
        model.base_model.toy_shared["default"].mul_(3.0)
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert torch.equal(tensors["base_model.toy_shared"], model.base_model.toy_shared["default"])

    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(loaded.base_model.toy_shared["default"], model.base_model.toy_shared["default"])
    loaded.load_adapter(tmp_path, "second")
    assert sorted(loaded.base_model.toy_shared) == ["default", "second"]
    loaded.delete_adapter("second")
    assert list(loaded.base_model.toy_shared) == ["default"]
    with torch.no_grad():
        assert loaded(token_ids()).logits.shape[-1] == loaded.config.vocab_size


def test_a_shared_parameter_trains_with_its_adapter_and_a_frozen_one_stays_frozen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A parameter kept once per model that requires grad after injection (VB-LoRA's vector bank)
    trains while its adapter is active and not loaded for inference; ``toy_shared``, made frozen, stays so."""

    def trained_bank(self: ToyTuner, model: PeftModel, adapter_name: str, config: ToyConfig, wrapped: list[str]) -> None:
        if not hasattr(model.base_model, "toy_bank"):
            model.base_model.toy_bank = nn.ParameterDict()
        model.base_model.toy_bank[adapter_name] = nn.Parameter(torch.ones(3))

    monkeypatch.setattr(ToyTuner, "after_inject", trained_bank)
    model = get_peft_model(tiny_llama(), get_config("toy", target_modules=["q_proj"]))
    model.add_adapter("other", get_config("toy", target_modules=["q_proj"]))
    bank, frozen = model.base_model.toy_bank, model.base_model.toy_shared
    assert bank["default"].requires_grad and not bank["other"].requires_grad
    model.set_adapter("other")
    assert not bank["default"].requires_grad and bank["other"].requires_grad
    assert not frozen["default"].requires_grad and not frozen["other"].requires_grad
    model.delete_adapter("other")
    assert bank["default"].requires_grad
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True).base_model.toy_bank["default"].requires_grad


def test_before_inject_must_return_the_method_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ToyTuner, "before_inject", lambda self, model, name, config: {"init": 1})
    with pytest.raises(TypeError, match="before_inject returned dict, not ToyConfig"):
        get_peft_model(tiny_llama(), get_config("toy", target_modules=["q_proj"]))


def test_a_config_written_before_api_1_4_keeps_every_target_filter() -> None:
    from kernel_core.contracts.tuner import BaseTunerConfig, TunerConfig

    class OldStyleConfig(TunerConfig):  # as a 1.2 plugin wrote it: TunerConfig had all the filters
        scale: float = 1.0

    config = OldStyleConfig(target_modules=["q_proj"], layers_to_transform=[0], modules_to_save=["lm_head"],
                            exclude_modules=["k_proj"])
    assert isinstance(config, BaseTunerConfig)
    assert {"exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save"} <= set(config.to_dict())
    with pytest.raises(ValueError, match="layers_to_transform and layers_pattern need target_modules as a list"):
        OldStyleConfig(target_modules="q_proj", layers_to_transform=[0])
    assert not {"exclude_modules", "layers_to_transform", "modules_to_save"} & set(ToyConfig().to_dict())
