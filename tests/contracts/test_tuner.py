"""The tuner config mixins: RankPatterns gives each module its rank and alpha by PEFT's regex
matching, under the config's own alpha field name."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, RankPatterns


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
