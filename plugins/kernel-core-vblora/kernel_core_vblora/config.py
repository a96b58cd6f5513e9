"""VB-LoRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``VBLoRAConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config inherits the three mixins and its
``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT 0.21:
#: the common table for the model types it lists, with all projections for five of them).
DEFAULT_TARGETS = {
    **{
        kind: COMMON_TARGET_MODULES[kind]
        for kind in (
            "gpt2", "bloom", "gptj", "gpt_neox", "gpt_neo", "llama", "llama4", "bert", "roberta", "gpt_bigcode",
            "deberta", "gemma", "gemma2", "gemma3_text", "gemma4", "qwen2", "qwen3", "nemotron_h",
        )
    },
    "t5": ("q", "k", "v", "o", "wi", "wo"),
    "mt5": ("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "dense"),
}


class VBLoRAConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One VB-LoRA adapter: per target module, ``B A`` added to the weight, each ``vector_length``
    slice of ``A`` (r, in) and ``B`` (out, r) the softmax-weighted sum of the ``topk`` vectors its
    logits pick from a bank of ``num_vectors`` vectors shared by every module."""

    r: PositiveInt = Field(default=4, description="Rank of the update.")
    num_vectors: PositiveInt = Field(default=256, description="Vectors in the shared bank.")
    vector_length: PositiveInt = Field(
        default=256, description="Length of each bank vector; it must divide every target's in and out features."
    )
    topk: PositiveInt = Field(default=2, description="Bank vectors mixed into each slice of A and B.")
    save_only_topk_weights: bool = Field(
        default=False,
        description="Save each slice's top-k indices and weights instead of its logits: smaller, for inference and merging only.",
    )
    vblora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    bias: Literal["none", "all", "vblora_only"] = Field(default="none", description="Which base biases train too.")
    init_vector_bank_bound: float = Field(
        default=0.02, ge=0.0, description="The bank starts uniform in +-init_vector_bank_bound."
    )
    init_logits_std: float = Field(default=0.1, ge=0.0, description="The logits start normal with this std.")

    @model_validator(mode="after")
    def _topk_within_the_bank(self) -> VBLoRAConfig:
        if self.topk > self.num_vectors:
            raise ValueError(f"topk ({self.topk}) cannot exceed num_vectors ({self.num_vectors})")
        return self
