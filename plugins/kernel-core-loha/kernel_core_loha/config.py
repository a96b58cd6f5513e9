"""LoHa's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``LoHaConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config inherits the three mixins and its
``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave
from kernel_core.peft.targets import pattern_value

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT,
#: whose table for this method is, in 0.21, its LoRA table; a string is a regex).
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


class LoHaConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One LoHa adapter: ``ΔW = (alpha / r) * (W1a W1b) ⊙ (W2a W2b)`` on each target module."""

    r: PositiveInt = Field(default=8, description="Rank of each of the two low-rank factors.")
    alpha: int | float = Field(default=8, description="Scale numerator: the update is scaled by alpha / r.")
    rank_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Training only: drop each output row of the update with this probability."
    )
    module_dropout: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Training only: skip the whole adapter for a forward with this probability."
    )
    use_effective_conv2d: bool = Field(
        default=False, description="On a Conv2d kernel above 1x1, each product as a CP decomposition (a core hada_t1/t2)."
    )
    init_weights: bool = Field(default=True, description="True: W2b = 0 (the identity); False: random, for tests.")
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict, description="Module-name regex -> r.")
    alpha_pattern: dict[str, int | float] = Field(default_factory=dict, description="Module-name regex -> alpha.")

    def for_module(self, module_name: str) -> LoHaConfig:
        """This module's rank and alpha, from ``rank_pattern``/``alpha_pattern``."""
        config = super().for_module(module_name)
        rank = pattern_value(module_name, self.rank_pattern, self.r)
        alpha = pattern_value(module_name, self.alpha_pattern, self.alpha)
        if (rank, alpha) == (self.r, self.alpha):
            return config
        return config.model_copy(update={"r": rank, "alpha": alpha})

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
