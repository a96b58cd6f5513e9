"""VeRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``VeraConfig`` has ``modules_to_save`` and the layer filters but no ``exclude_modules``,
so this config inherits those two mixins only: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, LayerSelection, ModulesToSave

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, with phi's attention projections).
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
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
}


class VeraConfig(BaseTunerConfig, LayerSelection, ModulesToSave):
    """One VeRA adapter: per target module, ``lambda_b * B (lambda_d * A x)`` added to the output,
    with ``A`` and ``B`` frozen random matrices shared by every module (drawn from
    ``projection_prng_key``) and the vectors ``lambda_b``, ``lambda_d`` trained."""

    r: int = Field(default=256, gt=0, description="Rank: rows of the shared projection A (columns of B).")
    projection_prng_key: int = Field(default=0, description="Seed the shared projections are drawn from.")
    save_projection: bool = Field(
        default=True,
        description="Save vera_A/vera_B in the file; False: they are drawn again from projection_prng_key on load.",
    )
    vera_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    d_initial: float = Field(default=0.1, description="Initial value of every lambda_d entry.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    bias: Literal["none", "all", "vera_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(
        default=True, description="lambda_b zero, lambda_d d_initial (the identity); False: lambda_b ones, lambda_d random, for tests."
    )
