"""Entry point: registers the mixture-of-experts families by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ModelArchitectureSpec

#: 1.3: the models are built on kernel_core.modeling (DecoderModel, FusedMoE, MoEOptions).
kernel_core_api = "1.3"

#: Record name -> (config.json ``architectures``, implementation, description). Each model class
#: checks the same architectures (kernel_core_moe_models.model).
FAMILIES: dict[str, tuple[frozenset[str], str, str]] = {
    "mixtral": (
        frozenset({"MixtralForCausalLM"}),
        "kernel_core_moe_models.model:MixtralModel",
        "Mixtral: every layer sparse, softmax top-k renormalised, optional sliding window.",
    ),
    "qwen2-moe": (
        frozenset({"Qwen2MoeForCausalLM"}),
        "kernel_core_moe_models.model:Qwen2MoeModel",
        "Qwen2-MoE: routed experts plus a sigmoid-gated shared expert, dense layers per mlp_only_layers.",
    ),
    "qwen3-moe": (
        frozenset({"Qwen3MoeForCausalLM"}),
        "kernel_core_moe_models.model:Qwen3MoeModel",
        "Qwen3-MoE: routed experts, RMSNorm of each query/key head, dense layers per mlp_only_layers.",
    ),
    "olmoe": (
        frozenset({"OlmoeForCausalLM"}),
        "kernel_core_moe_models.model:OlmoeModel",
        "OLMoE: every layer sparse, RMSNorm of the whole q and k projections, optional clip_qkv.",
    ),
}


@kernel_core.hookimpl
def kernel_core_model_architectures() -> list[ModelArchitectureSpec]:
    """One record per family: each has its own checkpoint names and config fields."""
    return [
        ModelArchitectureSpec(
            name=name, description=description, implementation=implementation, architectures=architectures
        )
        for name, (architectures, implementation, description) in FAMILIES.items()
    ]
