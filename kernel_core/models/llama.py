"""The Llama family (Llama, Mistral, Qwen2): our own forward over flattened tokens and paged KV.

Weights come straight from the folder's safetensors. q/k/v and gate/up are fused at load time
so that each decoder layer runs four GEMMs per step for the whole flattened batch; the
attention backend reads and writes the paged KV cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, PreTrainedConfig

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core.models.gemm import linear
from kernel_core.models.layers import FusedLinear, RotaryEmbedding
from kernel_core.models.weights import SafetensorsCheckpoint

log = logging.getLogger(__name__)

#: config.json ``architectures`` → whether (q/k/v, o_proj, MLP) projections carry a bias, as the
#: transformers class of that name builds them.
_BIASES = {
    "LlamaForCausalLM": lambda c: (bool(c.attention_bias), bool(c.attention_bias), bool(c.mlp_bias)),
    "MistralForCausalLM": lambda c: (False, False, False),
    "Qwen2ForCausalLM": lambda c: (True, False, False),
}
SUPPORTED_ARCHITECTURES = frozenset(_BIASES)


@dataclass
class DecoderLayer:
    """One decoder layer's weights, projections fused."""

    input_norm: torch.Tensor
    qkv_proj: FusedLinear
    o_proj: FusedLinear
    post_attention_norm: torch.Tensor
    gate_up_proj: FusedLinear
    down_proj: FusedLinear


class LlamaModel(ModelArchitecture):
    """A Llama-family causal LM: embeddings, decoder layers (RMSNorm, fused QKV, RoPE, attention
    through the backend, SwiGLU MLP) and a final norm; ``compute_logits`` applies ``lm_head``.

    ``weight_slices`` maps every Hugging Face parameter name to the tensor holding it and its
    rows there (``model.layers.0.self_attn.k_proj.weight`` → the layer's fused QKV weight and
    the k rows), for adapters that must address one HF module inside a fused projection; the
    :class:`FusedLinear` objects on each layer carry the same rows per module.
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        checkpoint: SafetensorsCheckpoint,
        attention: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.config, self.attention, self.dtype, self.device = config, attention, dtype, device
        self.architecture = _architecture(config)
        if config.hidden_act != "silu":
            raise UnsupportedModelError(
                f"hidden_act {config.hidden_act!r} in config.json is not supported (only silu)"
            )
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise InvalidModelFolderError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        self.hidden_size = config.hidden_size
        self.head_size = getattr(config, "head_dim", None) or self.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size
        self.eps = config.rms_norm_eps
        self.sliding_window = _sliding_window(config)
        #: Longest context computed as transformers does: RoPE tables (and ``dynamic`` scaling)
        #: stop at ``max_position_embeddings``; a sliding window is not implemented, so it caps it.
        self.max_model_len = config.max_position_embeddings
        if self.sliding_window is not None:
            self.max_model_len = min(self.max_model_len, self.sliding_window)
        self.rotary = RotaryEmbedding(config, self.head_size, self.max_model_len, dtype, device)
        self._load(checkpoint)

    @classmethod
    def from_pretrained(
        cls, folder: Path, *, attention: AttentionBackend, dtype: torch.dtype, device: torch.device
    ) -> LlamaModel:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with SafetensorsCheckpoint(folder) as checkpoint:
            model = cls(config, checkpoint, attention, dtype, device)
            unread = checkpoint.unread()
        if unread:  # e.g. a tied lm_head saved anyway, or rotary inv_freq buffers of old checkpoints
            log.warning("%s: ignored %d unused tensors: %s", folder, len(unread), ", ".join(unread[:5]))
        return model

    def _load(self, checkpoint: SafetensorsCheckpoint) -> None:
        load = _Loader(checkpoint, self.dtype, self.device)
        hidden, intermediate = self.hidden_size, self.config.intermediate_size
        qkv_bias, o_bias, mlp_bias = _BIASES[self.architecture](self.config)
        q_size, kv_size = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        self.embed_tokens = load.tensor("model.embed_tokens.weight", (self.vocab_size, hidden))
        self.layers = []
        for i in range(self.num_layers):
            layer, attn, mlp = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
            qkv = {f"{attn}.q_proj": q_size, f"{attn}.k_proj": kv_size, f"{attn}.v_proj": kv_size}
            gate_up = {f"{mlp}.gate_proj": intermediate, f"{mlp}.up_proj": intermediate}
            self.layers.append(
                DecoderLayer(
                    input_norm=load.tensor(f"{layer}.input_layernorm.weight", (hidden,)),
                    qkv_proj=load.linear(qkv, hidden, qkv_bias),
                    o_proj=load.linear({f"{attn}.o_proj": hidden}, q_size, o_bias),
                    post_attention_norm=load.tensor(f"{layer}.post_attention_layernorm.weight", (hidden,)),
                    gate_up_proj=load.linear(gate_up, hidden, mlp_bias),
                    down_proj=load.linear({f"{mlp}.down_proj": hidden}, intermediate, mlp_bias),
                )
            )
        self.norm = load.tensor("model.norm.weight", (hidden,))
        if self.config.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = load.tensor("lm_head.weight", (self.vocab_size, hidden))
        self.weight_slices = load.slices

    def lora_targets(self) -> dict[str, FusedLinear]:
        """Every projection of every decoder layer (q/k/v fused, o, gate/up fused, down)."""
        return {
            f"model.layers.{i}.{name}": getattr(layer, name)
            for i, layer in enumerate(self.layers)
            for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        self._check_context(metadata)
        cos, sin = self.rotary.cos_sin_at(positions)
        hidden = F.embedding(input_ids, self.embed_tokens)  # the residual stream, updated in place
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            self._attention_block(layer, hidden, cos, sin, kv_cache, metadata)
            self._mlp_block(layer, hidden)
        return F.rms_norm(hidden, (self.hidden_size,), self.norm, self.eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.lm_head)

    def _attention_block(
        self,
        layer: DecoderLayer,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> None:
        tokens, heads, kv_heads, size = hidden.shape[0], self.num_heads, self.num_kv_heads, self.head_size
        qkv = layer.qkv_proj(F.rms_norm(hidden, (self.hidden_size,), layer.input_norm, self.eps))
        qk = qkv[:, : (heads + kv_heads) * size].view(tokens, heads + kv_heads, size)
        RotaryEmbedding.rotate_(qk, cos, sin)  # q and k heads in one pass
        value = qkv[:, (heads + kv_heads) * size :].view(tokens, kv_heads, size)
        out = self.attention.forward(qk[:, :heads], qk[:, heads:], value, kv_cache, metadata)
        hidden.add_(layer.o_proj(out.reshape(tokens, heads * size)))

    def _mlp_block(self, layer: DecoderLayer, hidden: torch.Tensor) -> None:
        normed = F.rms_norm(hidden, (self.hidden_size,), layer.post_attention_norm, self.eps)
        gate, up = layer.gate_up_proj(normed).chunk(2, dim=-1)
        hidden.add_(layer.down_proj(F.silu(gate).mul_(up)))

    def _check_context(self, metadata: AttentionMetadata) -> None:
        """Refuse contexts the model cannot compute faithfully, rather than compute something else."""
        longest = max(metadata.seq_lens_host, default=0)
        if longest > self.max_model_len:
            if self.max_model_len == self.sliding_window:
                raise ValueError(
                    f"a context of {longest} tokens exceeds the sliding_window of {self.sliding_window} tokens "
                    f"in config.json: sliding-window attention is not implemented for {self.architecture}"
                )
            raise ValueError(
                f"a context of {longest} tokens exceeds max_position_embeddings ({self.max_model_len}) in config.json"
            )
        self.rotary.ensure_positions(longest)


class _Loader:
    """Reads one model's tensors, fusing projections, and records where each HF parameter went."""

    def __init__(self, checkpoint: SafetensorsCheckpoint, dtype: torch.dtype, device: torch.device) -> None:
        self.checkpoint, self.dtype, self.device = checkpoint, dtype, device
        self.slices: dict[str, tuple[torch.Tensor, slice]] = {}

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        loaded = self.checkpoint.read([name], [shape], self.dtype, self.device)
        self.slices[name] = (loaded, slice(0, shape[0]))
        return loaded

    def linear(self, modules: dict[str, int], in_features: int, bias: bool) -> FusedLinear:
        """One :class:`FusedLinear` stacking the HF ``modules`` (name → output features) in order."""
        parts, start = {}, 0
        for name, out_features in modules.items():
            parts[name] = slice(start, start + out_features)
            start += out_features
        fused = FusedLinear(
            self._stack(modules, "weight", (in_features,)), self._stack(modules, "bias", ()) if bias else None, parts
        )
        for name, rows in parts.items():
            self.slices[f"{name}.weight"] = (fused.weight, rows)
            if fused.bias is not None:
                self.slices[f"{name}.bias"] = (fused.bias, rows)
        return fused

    def _stack(self, modules: dict[str, int], kind: str, trailing: tuple[int, ...]) -> torch.Tensor:
        names = [f"{name}.{kind}" for name in modules]
        shapes = [(out_features, *trailing) for out_features in modules.values()]
        return self.checkpoint.read(names, shapes, self.dtype, self.device)


def _architecture(config: PreTrainedConfig) -> str:
    architectures = config.architectures or []
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    raise UnsupportedModelError(
        f"config.json architectures {architectures} are not supported by the llama model plugin "
        f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
    )


def _sliding_window(config: PreTrainedConfig) -> int | None:
    """The attention window transformers applies: Mistral's on every layer, Qwen2's only on
    layers typed ``sliding_attention``; None when attention is full everywhere."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)
