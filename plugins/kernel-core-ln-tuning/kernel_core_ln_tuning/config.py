"""LayerNorm tuning's config, with PEFT's keys, and its per-architecture targets.

PEFT's ``LNTuningConfig`` has ``exclude_modules`` and ``modules_to_save`` and no knobs of its
own: an adapter is a full copy of each target, so there is nothing to size.
"""

from __future__ import annotations

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, ModulesToSave

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("input_layernorm", "post_attention_layernorm", "norm"),
    "bloom": ("input_layernorm", "post_attention_layernorm", "ln_f"),
    "llava": ("multi_modal_projector", "input_layernorm", "post_attention_layernorm", "norm", "embed_tokens", "lm_head"),
    "t5": ("layer_norm", "final_layer_norm"),
    "mt5": ("layer_norm", "final_layer_norm"),
    "bart": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
    "gpt2": ("ln_1", "ln_2", "ln_f"),
    "blip-2": ("layernorm", "LayerNorm", "final_layer_norm", "self_attn_layer_norm"),
    "gptj": ("ln_1", "ln_f"),
    "falcon": ("input_layernorm", "post_attention_layernorm", "ln_f"),
    "mistral": ("input_layernorm", "post_attention_layernorm", "norm"),
    "phi": ("input_layernorm", "final_layernorm"),
    "gemma": ("input_layernorm", "post_attention_layernorm", "norm"),
    "gemma2": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm", "norm"),
    "gemma3_text": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm", "norm"),
    "qwen2": ("post_attention_layernorm",),
    "qwen3": ("post_attention_layernorm",),
}


class LNTuningConfig(BaseTunerConfig, ExcludeModules, ModulesToSave):
    """One LayerNorm-tuning adapter: each target module gets a trainable copy that replaces it
    while the adapter is active."""
