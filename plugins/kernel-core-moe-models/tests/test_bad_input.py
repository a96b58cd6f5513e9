"""Checkpoints and configs the MoE families cannot run are refused before serving, naming the
tensor or the config.json field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core_sdk.hf_oracle import edit_config, rewrite_tensors, save_random_model
from moe_oracle import CONFIGS, load_ours

MIXTRAL, QWEN2, QWEN3 = "mixtral-8x-top2", "qwen2moe-8x-top2-norm-shared", "qwen3moe-6x-top2-unnorm-biases"
OLMOE = "olmoe-8x-top2-unnorm"


def folder_of(name: str, tmp_path: Path) -> Path:
    return save_random_model(CONFIGS[name](), tmp_path / name)


MISSING = {
    OLMOE: "model.layers.0.mlp.experts.3.up_proj.weight",
    MIXTRAL: "model.layers.1.block_sparse_moe.experts.5.w3.weight",
    QWEN2: "model.layers.0.mlp.experts.7.down_proj.weight",
    QWEN3: "model.layers.1.mlp.experts.2.gate_proj.weight",
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_a_missing_expert_tensor_is_named(name: str, tmp_path: Path) -> None:
    folder = folder_of(name, tmp_path)
    rewrite_tensors(folder, lambda tensors: tensors.pop(MISSING[name]))
    with pytest.raises(InvalidModelFolderError, match=f"missing the tensor {re.escape(repr(MISSING[name]))}"):
        load_ours(folder)


def test_a_missing_shared_expert_gate_is_named(tmp_path: Path) -> None:
    folder = folder_of(QWEN2, tmp_path)
    rewrite_tensors(folder, lambda tensors: tensors.pop("model.layers.1.mlp.shared_expert_gate.weight"))
    with pytest.raises(InvalidModelFolderError, match=r"missing the tensor 'model\.layers\.1\.mlp\.shared_expert_gate\.weight'"):
        load_ours(folder)


WRONG_SHAPES = {
    "expert w2": (MIXTRAL, "model.layers.0.block_sparse_moe.experts.3.w2.weight", (64, 40), r"\[64, 40\], expected \[64, 48\]"),
    "router": (QWEN3, "model.layers.1.mlp.gate.weight", (5, 64), r"\[5, 64\], expected \[6, 64\]"),
    "projection-wide q_norm": (OLMOE, "model.layers.0.self_attn.q_norm.weight", (16,), r"\[16\], expected \[64\]"),
    "shared expert": (QWEN2, "model.layers.0.mlp.shared_expert.up_proj.weight", (80, 32), r"\[80, 32\], expected \[80, 64\]"),
}


@pytest.mark.parametrize("case", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(case: tuple[str, str, tuple[int, ...], str], tmp_path: Path) -> None:
    name, tensor, shape, shapes = case
    folder = folder_of(name, tmp_path)

    def reshape(tensors: dict[str, torch.Tensor]) -> None:
        tensors[tensor] = torch.zeros(shape)

    rewrite_tensors(folder, reshape)
    with pytest.raises(InvalidModelFolderError, match=f"{re.escape(repr(tensor))} .* has shape {shapes}"):
        load_ours(folder)


def test_a_fused_experts_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    """transformers 5's fused layout: ``down_proj`` must be ``[E, H, I]`` to match ``gate_up_proj``."""
    folder = folder_of(MIXTRAL, tmp_path)

    def fuse(tensors: dict[str, torch.Tensor]) -> None:
        for layer in (0, 1):
            old = f"model.layers.{layer}.block_sparse_moe"
            experts = [[tensors.pop(f"{old}.experts.{e}.{w}.weight") for w in ("w1", "w3", "w2")] for e in range(8)]
            new = f"model.layers.{layer}.mlp"
            tensors[f"{new}.gate.weight"] = tensors.pop(f"{old}.gate.weight")
            tensors[f"{new}.experts.gate_up_proj"] = torch.stack([torch.cat((w1, w3)) for w1, w3, _ in experts])
            tensors[f"{new}.experts.down_proj"] = torch.stack([w2 for _, _, w2 in experts])
        tensors["model.layers.1.mlp.experts.down_proj"] = torch.zeros(8, 64, 47)

    rewrite_tensors(folder, fuse)
    with pytest.raises(
        InvalidModelFolderError,
        match=r"'model\.layers\.1\.mlp\.experts\.down_proj' .* has shape \[8, 64, 47\], expected \[8, 64, 48\]",
    ):
        load_ours(folder)


BAD_CONFIGS = {
    "top-k above the experts (Mixtral)": (
        MIXTRAL, {"num_experts_per_tok": 9}, r"num_experts_per_tok 9 .* between 1 and num_local_experts \(8\)"
    ),
    "top-k 0 (Qwen3-MoE)": (QWEN3, {"num_experts_per_tok": 0}, r"num_experts_per_tok 0 .* between 1 and num_experts \(6\)"),
    "negative clip_qkv (OLMoE)": (OLMOE, {"clip_qkv": -1.0}, r"clip_qkv -1\.0 in config\.json is not a positive number"),
    "no experts but sparse layers (Mixtral)": (MIXTRAL, {"num_local_experts": 0}, r"num_local_experts 0 .* at least 1"),
    "decoder_sparse_step 0 (Qwen2-MoE)": (QWEN2, {"decoder_sparse_step": 0}, r"decoder_sparse_step 0 .* positive integer"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_routing_the_kernels_cannot_run_is_refused_naming_the_field(case: tuple[str, dict, str], tmp_path: Path) -> None:
    name, changes, message = case
    folder = folder_of(name, tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(InvalidModelFolderError, match=message):
        load_ours(folder)


def test_an_activation_other_than_silu_is_refused_naming_the_field(tmp_path: Path) -> None:
    folder = folder_of(QWEN3, tmp_path)
    edit_config(folder, hidden_act="gelu")
    with pytest.raises(UnsupportedModelError, match=r"hidden_act 'gelu' in config\.json is not supported"):
        load_ours(folder)
