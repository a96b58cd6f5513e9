"""RotaryEmbedding against transformers' own rotary embedding, for every supported RoPE type, and
rms_norm against LlamaRMSNorm: bit for bit in bfloat16, where greedy agreement with HF turns on ties."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from kernel_core.contracts.adapter_targets import ProjectionHook
from kernel_core.errors import UnsupportedModelError
from kernel_core.modeling import RotaryEmbedding, layers

CPU = torch.device("cpu")
HEAD_SIZE, HEADS, MAX_POSITIONS = 16, 4, 256
ROPE = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 10000.0,
    },
}


def config(rope: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=HEADS * HEAD_SIZE, num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
        rope_parameters=rope,
    )


@pytest.mark.parametrize("rope_type", sorted(ROPE))
def test_rotation_matches_transformers(rope_type: str) -> None:
    cfg = config(ROPE[rope_type])
    positions = torch.tensor([0, 7, 3, 200, 255])
    x = torch.randn(len(positions), HEADS, HEAD_SIZE, generator=torch.Generator().manual_seed(0))
    hf_x = x.transpose(0, 1)[None]  # [batch, heads, tokens, head_size]
    cos, sin = LlamaRotaryEmbedding(cfg)(hf_x, positions[None])
    expected, _ = apply_rotary_pos_emb(hf_x, hf_x, cos, sin)
    ours = x.clone()
    RotaryEmbedding.rotate_(ours, *RotaryEmbedding(cfg, HEAD_SIZE, MAX_POSITIONS, torch.float32, CPU).cos_sin_at(positions))
    torch.testing.assert_close(ours, expected[0].transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_bfloat16_rotation_equals_transformers_bit_for_bit() -> None:
    cfg = config(ROPE["default"])
    positions = torch.tensor([0, 7, 3, 200, 255])
    x = torch.randn(len(positions), HEADS, HEAD_SIZE, generator=torch.Generator().manual_seed(0)).bfloat16()
    hf_x = x.transpose(0, 1)[None]
    cos, sin = LlamaRotaryEmbedding(cfg)(hf_x, positions[None])
    expected, _ = apply_rotary_pos_emb(hf_x, hf_x, cos, sin)
    ours = x.clone()
    RotaryEmbedding.rotate_(ours, *RotaryEmbedding(cfg, HEAD_SIZE, MAX_POSITIONS, torch.bfloat16, CPU).cos_sin_at(positions))
    assert torch.equal(ours, expected[0].transpose(0, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_transformers_bit_for_bit(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5)
    norm.weight.data = 1 + 0.3 * torch.randn(576, generator=generator)
    norm = norm.to(dtype)
    x = torch.cat([scale * torch.randn(16, 576, generator=generator) for scale in (0.01, 1.0, 30.0)]).to(dtype)
    with torch.no_grad():
        assert torch.equal(layers.rms_norm(x, norm.weight, 1e-5), norm(x))


def test_table_grows_on_demand_to_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(ROPE["llama3"])
    full = RotaryEmbedding(cfg, HEAD_SIZE, MAX_POSITIONS, torch.float32, CPU)
    monkeypatch.setattr(layers, "_INITIAL_ROPE_POSITIONS", 8)
    rotary = RotaryEmbedding(cfg, HEAD_SIZE, MAX_POSITIONS, torch.float32, CPU)
    assert len(rotary.cos_sin) == 8
    rotary.ensure_positions(22)
    assert len(rotary.cos_sin) == 22
    assert torch.equal(rotary.cos_sin, full.cos_sin[:22])
    rotary.ensure_positions(10_000)  # capped at the model's positions
    assert len(rotary.cos_sin) == MAX_POSITIONS and torch.equal(rotary.cos_sin, full.cos_sin[:MAX_POSITIONS])


def test_unsupported_rope_type_is_named() -> None:
    rope = {
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
        "original_max_position_embeddings": 64,
    }
    with pytest.raises(UnsupportedModelError, match="rope_type 'longrope'"):
        RotaryEmbedding(config(rope), HEAD_SIZE, MAX_POSITIONS, torch.float32, CPU)


class Doubles(ProjectionHook):
    """Doubles the input and adds one to the output; records the input the GEMM read."""

    def before(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def after(self, output: torch.Tensor, x: torch.Tensor) -> None:
        self.read = x
        output.add_(1)


def test_projection_hooks_run_around_the_gemm_in_order_without_changing_the_input() -> None:
    weight, bias, x = torch.randn(6, 4), torch.randn(6), torch.randn(3, 4)
    linear = layers.FusedLinear(weight, bias, {"p": slice(0, 6)})
    torch.testing.assert_close(linear(x), x @ weight.T + bias)
    first, second = Doubles(), Doubles()
    linear.hooks += [first, second, ProjectionHook()]
    original = x.clone()
    torch.testing.assert_close(linear(x), 4 * x @ weight.T + bias + 2)
    assert torch.equal(x, original)
    torch.testing.assert_close(first.read, 4 * x)
    assert second.read is first.read
