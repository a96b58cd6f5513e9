"""Entry point of the transformers double."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ModelArchitectureSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_model_architectures() -> list[ModelArchitectureSpec]:
    return [
        ModelArchitectureSpec(
            name="hf-double",
            description="Test double: runs transformers on whole sequences, ignoring the paged cache.",
            implementation="kcore_hf_double.model:TransformersDouble",
            architectures=frozenset({"LlamaForCausalLM"}),
        )
    ]
