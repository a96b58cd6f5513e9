"""The Llama family as a :class:`~kernel_core.modeling.DecoderModel`: only what differs between
Llama, Mistral, Qwen2 and Qwen3 is said here, as each one's transformers class builds it."""

from __future__ import annotations

from dataclasses import replace

from kernel_core.modeling import AttentionOptions, DecoderModel
from kernel_core_llama.plugin import ARCHITECTURES


class LlamaModel(DecoderModel):
    """Llama (biases per ``attention_bias``/``mlp_bias``), Mistral (no bias, its ``sliding_window``
    on every layer), Qwen2 (q/k/v biased, the window on ``sliding_attention`` layers) and Qwen3
    (biases per ``attention_bias``, RMSNorm of each q/k head, windows as Qwen2)."""

    supported_architectures = ARCHITECTURES

    def attention_options(self, index: int) -> AttentionOptions:
        options = super().attention_options(index)
        if self.architecture == "MistralForCausalLM":  # transformers' Mistral ignores layer_types
            return AttentionOptions(sliding_window=getattr(self.config, "sliding_window", None))
        if self.architecture == "Qwen2ForCausalLM":
            return replace(options, qkv_bias=True, o_bias=False)
        if self.architecture == "Qwen3ForCausalLM":
            return replace(options, qk_norm=True)
        return options
