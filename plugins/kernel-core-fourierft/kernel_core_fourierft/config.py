"""FourierFT's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``FourierFTConfig`` has every target filter, so this config inherits all three mixins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave
from kernel_core.peft.targets import pattern_value

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, with GPT-2's and GPT-BigCode's MLP output projection).
DEFAULT_TARGETS: dict[str, tuple[str, ...] | str] = {
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"), "gpt2": ("mlp.c_proj",),
    "bloom": ("query_key_value",), "blip-2": ("q", "v", "q_proj", "v_proj"), "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "deberta": ("in_proj",),
    "layoutlm": ("query", "value"), "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",), "gpt_bigcode": ("mlp.c_proj",), "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",), "RefinedWeb": ("query_key_value",), "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"), "codegen": ("qkv_proj",), "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
}


class FourierFTConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One FourierFT adapter: per target module, ``n_frequency`` learned coefficients at places of
    the weight's 2-D spectrum drawn from ``random_loc_seed``; the update is the real part of their
    inverse 2-D FFT times ``scaling``."""

    n_frequency: int = Field(default=1000, gt=0, description="Learned spectral coefficients per module.")
    scaling: float = Field(default=150.0, description="Factor on the inverse FFT (like LoRA's alpha / r).")
    random_loc_seed: int = Field(default=777, description="Seed the coefficients' places are drawn from.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    bias: Literal["none", "all", "fourier_only"] = Field(default="none", description="Which base biases train too.")
    n_frequency_pattern: dict[str, int] = Field(
        default_factory=dict, description="n_frequency per module, by regex on the end of the name."
    )
    init_weights: bool = Field(default=False, description="True: coefficients zero (the identity); False: random normal.")

    def for_module(self, module_name: str) -> FourierFTConfig:
        """This module's ``n_frequency``, from ``n_frequency_pattern``."""
        config = super().for_module(module_name)
        n_frequency = pattern_value(module_name, self.n_frequency_pattern, self.n_frequency)
        if n_frequency != self.n_frequency:
            config = config.model_copy(update={"n_frequency": n_frequency})
            config._module_name = module_name
        return config
