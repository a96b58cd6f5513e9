"""The tuner authoring helpers: RankPatterns gives each module its rank and alpha by PEFT's regex
matching, under the config's own alpha field name; SingleLayerTuner checks what it wraps;
bias_parameters is PEFT's ``bias`` option."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, RankPatterns, SingleLayerTuner, TunerLayer, bias_parameters


class _Config(RankPatterns, BaseTunerConfig):
    r: int = Field(default=4, gt=0)
    alpha: float = 8.0


class _Renamed(RankPatterns, BaseTunerConfig):
    alpha_field: ClassVar[str] = "lora_alpha"
    r: int = Field(default=4, gt=0)
    lora_alpha: float = 8.0


def test_patterns_give_each_module_its_rank_and_alpha() -> None:
    config = _Config(rank_pattern={r"layers\.1\.q_proj": 2}, alpha_pattern={"down_proj": 3.0})
    q1, q0, down = (config.for_module(f"model.{name}") for name in ("layers.1.q_proj", "layers.0.q_proj", "layers.0.down_proj"))
    assert (q1.r, q1.alpha, q1.module_name) == (2, 8.0, "model.layers.1.q_proj")
    assert (q0.r, q0.alpha, q0.module_name) == (4, 8.0, "model.layers.0.q_proj")
    assert (down.r, down.alpha) == (4, 3.0)
    assert set(config.to_dict()) >= {"rank_pattern", "alpha_pattern"}


def test_the_alpha_field_may_have_the_method_s_name() -> None:
    config = _Renamed(rank_pattern={"v_proj": 6}, alpha_pattern={"v_proj": 1.5})
    module = config.for_module("model.layers.0.self_attn.v_proj")
    assert (module.r, module.lora_alpha, config.r, config.lora_alpha) == (6, 1.5, 4, 8.0)


class _Layer(TunerLayer):
    """Adds nothing: enough to see what SingleLayerTuner builds."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BaseTunerConfig) -> None:
        super().__init__(base_layer)
        self.names = [adapter_name]

    @property
    def adapter_names(self) -> list[str]:
        return self.names

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None: ...

    def delete_adapter(self, adapter_name: str) -> None: ...

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return result

    def merge(self, adapter_names: object = None) -> None: ...

    def unmerge(self) -> None: ...


class _Tuner(SingleLayerTuner):
    config_class = _Config
    prefix = "toy_"
    layer_class = _Layer
    module_types = (nn.Linear,)


def test_a_single_layer_tuner_wraps_its_module_types_with_its_config() -> None:
    tuner, linear = _Tuner(), nn.Linear(2, 3)
    assert tuner.can_wrap(linear) and not tuner.can_wrap(nn.Embedding(4, 2))
    layer = tuner.wrap(linear, "a", _Config())
    assert isinstance(layer, _Layer) and layer.base_layer is linear and layer.adapter_names == ["a"]
    with pytest.raises(TypeError, match="_Tuner cannot adapt this Embedding"):
        tuner.wrap(nn.Embedding(4, 2), "a", _Config())
    with pytest.raises(TypeError, match="_Tuner needs a _Config, got _Renamed"):
        tuner.wrap(linear, "a", _Renamed())


def test_bias_parameters_is_peft_s_bias_option() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), nn.LayerNorm(2))
    model[0] = _Tuner().wrap(model[0], "a", _Config())
    assert bias_parameters(model, ["0"], "none") == []
    assert bias_parameters(model, ["0"], "all") == ["0.base_layer.bias", "2.bias"]
    assert bias_parameters(model, ["0"], "toy_only") == ["0.base_layer.bias"]
    with pytest.raises(ValueError, match="bias='some'"):
        bias_parameters(model, ["0"], "some")
