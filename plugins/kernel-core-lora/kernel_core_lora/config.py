"""LoRA's hyper-parameters, with PEFT's field names and defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator

from kernel_core.contracts.tuner import TunerConfig
from kernel_core.peft.targets import pattern_value

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT;
#: a string is a regex).
DEFAULT_TARGETS: dict[str, tuple[str, ...] | str] = {
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"), "gpt2": ("c_attn",),
    "bloom": ("query_key_value",), "blip-2": ("q", "v", "q_proj", "v_proj"), "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "deberta": ("in_proj",),
    "layoutlm": ("query", "value"), "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",), "gpt_bigcode": ("c_attn",), "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",), "RefinedWeb": ("query_key_value",), "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"), "codegen": ("qkv_proj",), "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
}
#: ``init_lora_weights`` values besides True/False: the string, or a regex it must fully match.
INITS = ("gaussian", "pissa", r"pissa_niter_\d+", "olora")


class LoraConfig(TunerConfig):
    """One LoRA adapter: ``W x + (alpha / r) * B A x`` on each target module."""

    inert_peft_keys: ClassVar[Mapping[str, Any]] = {"megatron_core": "megatron.core", "qalora_group_size": 16}

    r: int = Field(default=8, gt=0, description="Rank of the update.")
    lora_alpha: int | float = Field(default=8, description="Scale numerator: the update is scaled by alpha / r.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which base biases train too.")
    use_rslora: bool = Field(default=False, description="Scale by alpha / sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA: a learned magnitude per output.")
    init_lora_weights: bool | str = Field(
        default=True,
        description="True (B = 0), 'gaussian', 'pissa', 'pissa_niter_<n>', 'olora', or False (random, for tests).",
    )
    fan_in_fan_out: bool = Field(default=False, description="Weights stored (in, out), as GPT-2's Conv1D.")
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict, description="Module-name regex -> r.")
    alpha_pattern: dict[str, int | float] = Field(default_factory=dict, description="Module-name regex -> alpha.")

    @field_validator("init_lora_weights")
    @classmethod
    def _known_init(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not any(re.fullmatch(init, value) for init in INITS):
            raise ValueError(f"unknown init {value!r}; use True, False, or one of {', '.join(INITS)}")
        return value

    def for_module(self, module_name: str) -> LoraConfig:
        """This module's rank and alpha, from ``rank_pattern``/``alpha_pattern``."""
        config = super().for_module(module_name)
        rank = pattern_value(module_name, self.rank_pattern, self.r)
        alpha = pattern_value(module_name, self.alpha_pattern, self.lora_alpha)
        if (rank, alpha) == (self.r, self.lora_alpha):
            return config
        return config.model_copy(update={"r": rank, "lora_alpha": alpha})

    @property
    def max_rank(self) -> int:
        return max([self.r, *self.rank_pattern.values()])
