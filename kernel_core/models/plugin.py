"""Entry point of the built-in model architectures: registers the Llama family, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ModelArchitectureSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_model_architectures() -> list[ModelArchitectureSpec]:
    """Llama, Mistral and Qwen2 share one forward (they differ only in biases and windows)."""
    return [
        ModelArchitectureSpec(
            name="llama",
            description="Llama-family decoder (Llama, Mistral, Qwen2) over paged KV, fused projections.",
            implementation="kernel_core.models.llama:LlamaModel",
            architectures=frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}),
        )
    ]
