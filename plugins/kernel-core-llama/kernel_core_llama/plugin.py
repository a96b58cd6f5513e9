"""Entry point: registers the Llama family by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ModelArchitectureSpec

#: 1.3: the model is built on kernel_core.modeling, the public model-building surface.
kernel_core_api = "1.3"

#: The config.json ``architectures`` the model runs (kernel_core_llama.model checks the same set).
ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})


@kernel_core.hookimpl
def kernel_core_model_architectures() -> list[ModelArchitectureSpec]:
    """Llama, Mistral, Qwen2 and Qwen3 share one forward (they differ in biases, windows, q/k norm)."""
    return [
        ModelArchitectureSpec(
            name="llama",
            description="Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over paged KV, fused projections.",
            implementation="kernel_core_llama.model:LlamaModel",
            architectures=ARCHITECTURES,
        )
    ]
