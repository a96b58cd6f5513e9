"""BOFT's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``BOFTConfig`` has every target filter, so this config is a :class:`TunerConfig`; its
per-architecture targets are PEFT's LoRA table, as for OFT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kernel_core.contracts.tuner import TunerConfig

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's BOFT table is
#: its LoRA table (facts from PEFT; a string is a regex).
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


class BOFTConfig(TunerConfig):
    """One BOFT adapter: each target's input is rotated by a product of
    ``boft_n_butterfly_factor`` permuted block-diagonal orthogonal matrices, and its output
    (before the bias) scaled per feature.

    Exactly one of ``boft_block_size`` and ``boft_block_num`` is non-zero; the other follows from
    the layer's ``in_features``, which must divide evenly (checked per layer, naming it).
    """

    boft_block_size: int = Field(default=4, ge=0, description="Block size (0: derived from boft_block_num).")
    boft_block_num: int = Field(default=0, ge=0, description="Blocks per layer (0: derived from boft_block_size).")
    boft_n_butterfly_factor: int = Field(default=1, ge=1, description="Butterfly factors; 1 is block-diagonal OFT.")
    boft_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="While training, blocks of one factor set to the identity.")
    fan_in_fan_out: bool = Field(default=False, description="Kept for PEFT's files; BOFT wraps nn.Linear only.")
    bias: Literal["none", "all", "boft_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(default=True, description="True: the identity and a scale of one; False: random, for tests.")

    @model_validator(mode="after")
    def _one_of_block_size_and_num(self) -> BOFTConfig:
        """As in PEFT: ``boft_block_size * boft_block_num == in_features``, so exactly one is given."""
        if (self.boft_block_size == 0) == (self.boft_block_num == 0):
            raise ValueError(
                "boft_block_size and boft_block_num: exactly one must be non-zero "
                f"(boft_block_size={self.boft_block_size}, boft_block_num={self.boft_block_num})"
            )
        return self
