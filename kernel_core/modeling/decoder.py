"""The generic pre-norm decoder: embeddings, layers of attention and MLP blocks, final norm, lm_head.

Llama, Mistral, Qwen2/3 and the mixture-of-experts families built on them share this skeleton; a
model plugin subclasses :class:`DecoderModel` and says only what differs (which ``architectures``
it runs, each layer's :class:`AttentionOptions`, the MLP block), so the forward, weight loading,
adapter targets and the checks stay in one place. Public (:mod:`kernel_core.modeling`, plugin API 1.3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from transformers import AutoConfig, PreTrainedConfig

from kernel_core.contracts.adapter_targets import EmbeddingHook, KVHook
from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.errors import UnsupportedModelError
from kernel_core.modeling.attention import AttentionHeads, AttentionOptions, SelfAttention, shard_heads
from kernel_core.modeling.gemm import linear
from kernel_core.modeling.layers import FusedLinear, RotaryEmbedding, rms_norm
from kernel_core.modeling.loader import WeightLoader
from kernel_core.modeling.group import SINGLE, TensorParallel
from kernel_core.modeling.mlp import GatedMLP
from kernel_core.modeling.parallel import ParallelLMHead, VocabParallelEmbedding, vocab_range
from kernel_core.modeling.weights import SafetensorsCheckpoint

log = logging.getLogger(__name__)


class MLPBlock(Protocol):
    """A layer's MLP: ``[T, hidden]`` normed input → ``[T, hidden]``. A block with an
    ``adapter_projections() -> dict[str, FusedLinear]`` method offers those projections to served
    adapters (``lora_projections``, its plugin API 1.3-1.4 name, is still read)."""

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(eq=False)
class DecoderLayer:
    """One decoder layer: RMSNorm weights and its two blocks."""

    input_norm: torch.Tensor
    attention: SelfAttention
    post_attention_norm: torch.Tensor
    mlp: MLPBlock


class DecoderModel(ModelArchitecture):
    """A pre-norm causal decoder whose weights follow the HF layout ``model.embed_tokens``,
    ``model.layers.{i}.{input_layernorm,self_attn,post_attention_layernorm,mlp}``, ``model.norm``
    and ``lm_head`` (absent when ``tie_word_embeddings``).

    Subclasses set :attr:`supported_architectures` and override :meth:`attention_options` and
    :meth:`build_mlp` where their transformers class differs from the defaults.

    ``weight_slices`` maps every Hugging Face parameter name to the tensor holding it and its
    rows there (``model.layers.0.self_attn.k_proj.weight`` → the layer's fused QKV weight and
    the k rows), for adapters that must address one HF module inside a fused projection.
    """

    #: config.json ``architectures`` values this class runs (the plugin record lists the same).
    supported_architectures: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        config: PreTrainedConfig,
        checkpoint: SafetensorsCheckpoint,
        attention: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
        tp: TensorParallel = SINGLE,
    ) -> None:
        self.config, self.attention, self.dtype, self.device, self.tp = config, attention, dtype, device, tp
        self.architecture = self._architecture()
        full = AttentionHeads.from_config(config)
        shard = shard_heads(full, tp)  # this rank's heads (all at size 1)
        self.num_heads, self.num_kv_heads, self.head_size = shard.heads.num_heads, shard.heads.num_kv_heads, full.head_size
        #: The model's KV heads, and the global indices of the ones this rank's KV cache holds
        #: (what served per-KV-head data, prefix tuning's keys and values, is cut by).
        self.total_kv_heads, self.kv_heads_held = full.num_kv_heads, shard.kv_heads
        self.num_layers = config.num_hidden_layers
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.eps = config.rms_norm_eps
        self._load(WeightLoader(checkpoint, dtype, device, tp))
        self.sliding_windows = frozenset(
            layer.attention.sliding_window for layer in self.layers if layer.attention.sliding_window is not None
        )
        #: Longest context computed as transformers does: RoPE tables (and ``dynamic`` scaling)
        #: stop at ``max_position_embeddings``.
        self.max_model_len = config.max_position_embeddings
        self.rotary = RotaryEmbedding(config, self.head_size, self.max_model_len, dtype, device)
        self._embedding_hooks: list[EmbeddingHook] = []

    @classmethod
    def from_pretrained(
        cls, folder: Path, *, attention: AttentionBackend, dtype: torch.dtype, device: torch.device, **extra: Any
    ) -> DecoderModel:
        """The model of ``folder`` (``config.json`` read without remote code, safetensors weights);
        ``extra`` keywords go to the subclass's ``__init__`` (e.g. the ``moe`` options of an MoE
        model, whose own ``from_pretrained`` names that parameter for the engine to pass it; ``tp``,
        this rank's :class:`TensorParallel` group, to load the rank's shard only)."""
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with SafetensorsCheckpoint(folder) as checkpoint:
            model = cls(config, checkpoint, attention, dtype, device, **extra)
            unread = checkpoint.unread()
        if unread:  # e.g. a tied lm_head saved anyway, or rotary inv_freq buffers of old checkpoints
            log.warning("%s: ignored %d unused tensors: %s", folder, len(unread), ", ".join(unread[:5]))
        return model

    # --- what a subclass may change ---------------------------------------------------------

    def attention_options(self, index: int) -> AttentionOptions:
        """Layer ``index``'s attention. Default: q/k/v and o biases per ``attention_bias``; the
        config's ``sliding_window`` on the layers ``layer_types`` marks ``sliding_attention``
        (on every layer when the config has no ``layer_types``), as transformers' models do."""
        bias = bool(getattr(self.config, "attention_bias", False))
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None and layer_types[index] != "sliding_attention":
            window = None
        return AttentionOptions(qkv_bias=bias, o_bias=bias, sliding_window=window)

    def build_mlp(self, index: int, prefix: str, loader: WeightLoader) -> MLPBlock:
        """Layer ``index``'s MLP block, whose HF modules are under ``prefix``
        (``model.layers.{index}.mlp``). Default: a :class:`GatedMLP`, biased per ``mlp_bias``."""
        return GatedMLP.load(self.config, loader, prefix, bias=bool(getattr(self.config, "mlp_bias", False)))

    # --- the skeleton ---------------------------------------------------------------------------

    def _architecture(self) -> str:
        architectures = self.config.architectures or []
        for name in architectures:
            if name in self.supported_architectures:
                return name
        raise UnsupportedModelError(
            f"config.json architectures {architectures} are not supported by {type(self).__name__} "
            f"(supported: {', '.join(sorted(self.supported_architectures)) or 'none'})"
        )

    def _load(self, loader: WeightLoader) -> None:
        hidden = (self.hidden_size,)
        self.embed_tokens = self._vocab_shard(loader, "model.embed_tokens.weight")
        self.layers = []
        for i in range(self.num_layers):
            layer = f"model.layers.{i}"
            self.layers.append(
                DecoderLayer(
                    input_norm=loader.tensor(f"{layer}.input_layernorm.weight", hidden),
                    attention=SelfAttention.load(
                        self.config, loader, f"{layer}.self_attn", self.attention, self.attention_options(i)
                    ),
                    post_attention_norm=loader.tensor(f"{layer}.post_attention_layernorm.weight", hidden),
                    mlp=self.build_mlp(i, f"{layer}.mlp", loader),
                )
            )
        self.norm = loader.tensor("model.norm.weight", hidden)
        if self.config.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = self._vocab_shard(loader, "lm_head.weight")
        self.weight_slices = loader.slices
        self._projections = loader.linears

    def _vocab_shard(self, loader: WeightLoader, name: str) -> torch.Tensor:
        """A ``[vocab, hidden]`` table: whole at size 1, else this rank's vocabulary range
        (:class:`VocabParallelEmbedding`), read from the checkpoint's slice."""
        shape = (self.vocab_size, self.hidden_size)
        if self.tp.world_size == 1:
            return loader.tensor(name, shape)
        source = loader.checkpoint.lazy(name, shape)
        return VocabParallelEmbedding.shard(source, self.vocab_size, self.tp, dtype=self.dtype, device=self.device).weight

    def adapter_targets(self) -> dict[str, FusedLinear]:
        """Every projection of every layer's attention (q/k/v fused, o), and of its MLP block when
        the block offers them (``adapter_projections``), keyed ``model.layers.{i}.{name}``."""
        targets = {}
        for i, layer in enumerate(self.layers):
            for block in (layer.attention, layer.mlp):
                projections = getattr(block, "adapter_projections", None) or getattr(block, "lora_projections", None)
                if projections is not None:
                    targets.update({f"model.layers.{i}.{name}": proj for name, proj in projections().items()})
        return targets

    def embedding_hooks(self) -> list[EmbeddingHook]:
        return self._embedding_hooks

    def kv_hooks(self) -> list[list[KVHook]]:
        return [layer.attention.kv_hooks for layer in self.layers]

    def prepare_weights(self, prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Every projection the loader fused, and an untied ``lm_head``, in ``prepare``'s layout;
        ``weight_slices`` points at the prepared tensors, so the loaded ones are freed. A tied
        ``lm_head`` stays as loaded: it is also the embedding table, which is indexed, not multiplied."""
        prepared: dict[int, torch.Tensor] = {}
        for fused in self._projections:
            loaded = fused.weight
            fused.weight = prepared[id(loaded)] = prepare(loaded)
        if self.lm_head is not self.embed_tokens:
            loaded = self.lm_head
            self.lm_head = prepared[id(loaded)] = prepare(loaded)
        self.weight_slices = {name: (prepared.get(id(t), t), rows) for name, (t, rows) in self.weight_slices.items()}

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        self._check_context(metadata)
        cos, sin = self.rotary.cos_sin_at(positions)
        hidden = self._embed(input_ids)  # the residual stream, updated in place
        for hook in self._embedding_hooks:
            hook(hidden)
        eps = self.eps
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden.add_(layer.attention(rms_norm(hidden, layer.input_norm, eps), cos, sin, kv_cache, metadata))
            hidden.add_(layer.mlp(rms_norm(hidden, layer.post_attention_norm, eps)))
        return rms_norm(hidden, self.norm, eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[rows, vocab]`` logits; under tensor parallelism gathered to rank 0, the one that
        samples (None on the others: one gather, no sampling on ranks that answer nothing)."""
        if self.tp.world_size == 1:
            return linear(hidden, self.lm_head)
        return ParallelLMHead(self.lm_head, self.vocab_size, self.tp)(hidden, dst=0)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.embedding(input_ids, self.embed_tokens)
        ids, _ = vocab_range(self.vocab_size, self.tp)
        return VocabParallelEmbedding(self.embed_tokens, ids, self.vocab_size, self.tp)(input_ids)

    def _check_context(self, metadata: AttentionMetadata) -> None:
        """Refuse contexts the model cannot compute faithfully, rather than compute something else."""
        longest = max(metadata.seq_lens_host, default=0)
        if longest > self.max_model_len:
            raise ValueError(
                f"a context of {longest} tokens exceeds max_position_embeddings ({self.max_model_len}) in config.json"
            )
        self.rotary.ensure_positions(longest)
