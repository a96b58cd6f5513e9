"""Target selection follows PEFT's rules: checked against the real ``peft`` package (test-only)."""

from __future__ import annotations

import peft  # the oracle: a test-only dependency, installed by `make test`
import pytest
from torch import nn

from kernel_core.peft.targets import NoTargetModulesError, pattern_value, select_targets


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def peft_targets(**config) -> dict[str, int]:
    """Module name → rank for every module real PEFT wraps with LoRA."""
    from peft.tuners.lora import LoraLayer

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, **config))
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix): module.r["default"]
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


CONFIGS = {
    "suffix-list": dict(target_modules=["q_proj", "v_proj"]),
    "exact-and-suffix": dict(target_modules=["model.layers.0.mlp.down_proj", "k_proj"]),
    "regex-full-match": dict(target_modules=r".*\.(1|2)\.self_attn\.(q|o)_proj"),
    "all-linear": dict(target_modules="all-linear"),
    "exclude-list": dict(target_modules="all-linear", exclude_modules=["gate_proj", "model.layers.0.self_attn.q_proj"]),
    "exclude-regex": dict(target_modules=["q_proj", "up_proj"], exclude_modules=r".*\.1\..*"),
    "layers-to-transform": dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[0, 2]),
    "layers-pattern": dict(target_modules=["o_proj"], layers_to_transform=1, layers_pattern="layers"),
    "rank-pattern": dict(target_modules="all-linear", rank_pattern={"v_proj": 2, r"layers\.2\.mlp\.up_proj": 6}),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_same_modules_and_ranks_as_peft(config):
    expected = peft_targets(**config)
    options = {k: v for k, v in config.items() if k not in {"target_modules", "rank_pattern"}}
    ours = select_targets(tiny_llama(), config["target_modules"], **options)
    assert set(ours) == set(expected)
    ranks = {name: pattern_value(name, config.get("rank_pattern", {}), 4) for name in ours}
    assert ranks == expected


def test_no_match_names_the_config_and_close_modules():
    with pytest.raises(NoTargetModulesError, match=r"\['q_prj'\] matched no module of LlamaForCausalLM.*close module names: .*q_proj"):
        select_targets(tiny_llama(), ["q_prj"])


def test_exclusions_that_remove_everything_are_an_error():
    with pytest.raises(NoTargetModulesError, match="after exclude_modules"):
        select_targets(tiny_llama(), ["q_proj"], exclude_modules=["q_proj"])
