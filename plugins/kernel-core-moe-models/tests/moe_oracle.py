"""Tiny random MoE configs of each family, transformers' model of them in fp32 with its eager
per-expert loop (the oracle of these tests), our model of them, and the int8 grid of the experts.
The oracle's generic helpers are the SDK's (``kernel_core_sdk.hf_oracle``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    MixtralConfig,
    OlmoeConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)

from kernel_core.contracts.attention import AttentionBackend
from kernel_core.modeling import MoEOptions
from kernel_core_moe_models import plugin
from kernel_core_moe_models.model import SparseMoEModel
from kernel_core_sdk.conformance import ReferenceAttentionBackend
from kernel_core_sdk.hf_oracle import save_servable_model

TOLERANCE = 1e-4
CPU = torch.device("cpu")
TINY: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,  # logits of order 1, so that 1e-4 is a sharp test
)
QWEN_MOE = dict(intermediate_size=96, moe_intermediate_size=32)

#: Top-k 1 and 2, renormalised and not, a shared expert with its gate, dense layers beside sparse ones,
#: windows shorter than the prompts (Mixtral's on every layer, Qwen2-MoE's on its sliding_attention one).
CONFIGS: dict[str, Callable[..., PreTrainedConfig]] = {
    "mixtral-8x-top2": lambda **kw: MixtralConfig(
        **{**TINY, **kw}, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2
    ),
    "mixtral-4x-top1-window-5": lambda **kw: MixtralConfig(
        **{**TINY, **kw}, intermediate_size=48, num_local_experts=4, num_experts_per_tok=1, sliding_window=5
    ),
    "qwen2moe-8x-top2-norm-shared": lambda **kw: Qwen2MoeConfig(
        **{**TINY, **kw}, **QWEN_MOE, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        shared_expert_intermediate_size=80,
    ),
    "qwen2moe-4x-top1-unnorm-dense-layer0-window-6": lambda **kw: Qwen2MoeConfig(
        **{**TINY, **kw}, **QWEN_MOE, num_experts=4, num_experts_per_tok=1, norm_topk_prob=False,
        shared_expert_intermediate_size=40, mlp_only_layers=[0],
        use_sliding_window=True, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
    ),
    "qwen3moe-6x-top2-unnorm-biases": lambda **kw: Qwen3MoeConfig(
        **{**TINY, **kw}, **QWEN_MOE, head_dim=16, num_experts=6, num_experts_per_tok=2, norm_topk_prob=False,
        attention_bias=True,
    ),
    "olmoe-8x-top2-unnorm": lambda **kw: OlmoeConfig(
        **{**TINY, **kw}, intermediate_size=48, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
    ),
    "olmoe-4x-top1-norm-clip-biases": lambda **kw: OlmoeConfig(
        **{**TINY, **kw}, intermediate_size=48, num_experts=4, num_experts_per_tok=1, norm_topk_prob=True,
        clip_qkv=0.5, attention_bias=True,
    ),
    "qwen3moe-4x-top1-norm-sparse-step-2": lambda **kw: Qwen3MoeConfig(
        **{**TINY, **kw}, **QWEN_MOE, num_experts=4, num_experts_per_tok=1, norm_topk_prob=True,
        decoder_sparse_step=2,
    ),
}


def save_servable(name: str, tokenizer_folder: Path, folder: Path) -> Path:
    """The tiny model ``CONFIGS[name]`` with the embedded SmolLM2's tokenizer, for the engine."""
    return save_servable_model(CONFIGS[name], tokenizer_folder, folder)


def hf_model(folder: Path) -> PreTrainedModel:
    """transformers' model of ``folder`` in fp32 with its eager per-expert loop."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, experts_implementation="eager").eval()


def sparse_experts(hf: PreTrainedModel) -> list[torch.nn.Module]:
    """transformers' routed experts of each sparse layer (fused ``gate_up_proj``/``down_proj``)."""
    return [layer.mlp.experts for layer in hf.model.layers if hasattr(layer.mlp, "experts")]


def round_to_int8_grid(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[E, out, in]`` as int8 with one scale per expert and output channel represents
    it: the scale maps the row's largest magnitude to 127, every weight rounds to the nearest step."""
    step = weight.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(weight / step) * step


def rounded(hf: PreTrainedModel) -> PreTrainedModel:
    """``hf`` with its routed experts' weights on their int8 grids (in place)."""
    with torch.no_grad():
        for experts in sparse_experts(hf):
            experts.gate_up_proj.copy_(round_to_int8_grid(experts.gate_up_proj))
            experts.down_proj.copy_(round_to_int8_grid(experts.down_proj))
    return hf


def model_class(folder: Path) -> type[SparseMoEModel]:
    """Our class for ``folder``, found as the engine finds it: the record listing its architecture."""
    architectures = set(json.loads((folder / "config.json").read_text())["architectures"])
    (spec,) = [spec for spec in plugin.kernel_core_model_architectures() if spec.architectures & architectures]
    return spec.load()


def load_ours(
    folder: Path, moe: MoEOptions | None = None, attention: AttentionBackend | None = None
) -> SparseMoEModel:
    """Our model of ``folder`` in fp32 on the CPU (default: the reference attention, the default MoE kernel)."""
    return model_class(folder).from_pretrained(
        folder, attention=attention or ReferenceAttentionBackend(), dtype=torch.float32, device=CPU, moe=moe
    )
