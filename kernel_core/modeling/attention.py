"""The self-attention block of a decoder layer: fused QKV, RoPE, the backend over paged KV, o_proj.

Every decoder family here (Llama, Mistral, Qwen2/3, their MoE variants) shares this block and
differs only in biases, per-head q/k RMSNorm and the layer's sliding window, so a model plugin
states those (:class:`AttentionOptions`) instead of writing its own attention. Public
(:mod:`kernel_core.modeling`, plugin API 1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedConfig

from kernel_core.contracts.adapter_targets import KVHook
from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core.modeling.group import TensorParallel
from kernel_core.modeling.layers import FusedLinear, RotaryEmbedding, rms_norm
from kernel_core.modeling.loader import WeightLoader


@dataclass(frozen=True)
class AttentionHeads:
    """Query heads, key/value heads (fewer: grouped-query attention) and the size of each."""

    num_heads: int
    num_kv_heads: int
    head_size: int

    @classmethod
    def from_config(cls, config: PreTrainedConfig) -> AttentionHeads:
        """Read as transformers does: ``head_dim`` when set, else ``hidden_size / heads``."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            raise InvalidModelFolderError(
                f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        return cls(heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads)


@dataclass(frozen=True)
class AttentionOptions:
    """What one layer's attention does beyond the common block, as its transformers class does."""

    #: Whether the q/k/v projections carry a bias (Qwen2: yes), and whether o_proj does.
    qkv_bias: bool = False
    o_bias: bool = False
    #: RMSNorm of the queries and keys before RoPE (``q_norm``/``k_norm`` weights): of each head
    #: (``qk_norm_scope="head"``, Qwen3) or of the whole q and k projections (``"projection"``, OLMoE).
    qk_norm: bool = False
    qk_norm_scope: str = "head"
    #: Queries, keys and values clamped to ``[-clip_qkv, clip_qkv]`` after the norm (OLMoE's ``clip_qkv``).
    clip_qkv: float | None = None
    #: A query at position q sees keys at positions p with ``q - sliding_window < p <= q``.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise InvalidModelFolderError(
                f"sliding_window {self.sliding_window!r} in config.json is not a positive number of tokens"
            )
        if self.qk_norm_scope not in QK_NORM_SCOPES:
            raise ValueError(f"qk_norm_scope {self.qk_norm_scope!r} is not one of {', '.join(QK_NORM_SCOPES)}")
        if self.clip_qkv is not None and not self.clip_qkv > 0:
            raise InvalidModelFolderError(f"clip_qkv {self.clip_qkv!r} in config.json is not a positive number")


@dataclass(frozen=True)
class HeadShard:
    """The attention heads one rank holds: ``heads`` (its counts, for its :class:`SelfAttention`),
    the global indices of its query heads and KV heads, and how many ranks hold each KV head."""

    heads: AttentionHeads
    q_heads: slice
    kv_heads: slice
    kv_replicas: int


def shard_heads(heads: AttentionHeads, tp: TensorParallel) -> HeadShard:
    """vLLM's rule: query heads split evenly (the size must divide them); KV heads split evenly
    when there are at least as many as ranks (the size must divide them), otherwise each rank
    holds one KV head, replicated on ``world_size / kv_heads`` consecutive ranks (the size must
    be a multiple of them). Rank r's query heads then all read its KV heads."""
    size, kv = tp.world_size, heads.num_kv_heads
    q_heads = tp.even_split(heads.num_heads, "num_attention_heads", ": each rank computes whole query heads")
    if kv >= size:
        kv_heads, replicas = tp.even_split(kv, "num_key_value_heads", ": each rank holds whole KV heads"), 1
    elif size % kv:
        raise UnsupportedModelError(
            f"tensor_parallel_size {size} exceeds num_key_value_heads ({kv}) and is not a multiple of it: "
            "KV heads can only be replicated evenly across ranks"
        )
    else:
        replicas = size // kv
        kv_heads = slice(tp.rank // replicas, tp.rank // replicas + 1)
    local = AttentionHeads(q_heads.stop - q_heads.start, kv_heads.stop - kv_heads.start, heads.head_size)
    return HeadShard(local, q_heads, kv_heads, replicas)


def qkv_rows(shard: HeadShard) -> tuple[slice, slice, slice]:
    """The rows of the q, k and v weights (each its own tensor, HF layout) that ``shard`` holds."""
    size = shard.heads.head_size
    kv = slice(shard.kv_heads.start * size, shard.kv_heads.stop * size)
    return slice(shard.q_heads.start * size, shard.q_heads.stop * size), kv, kv


#: What an RMSNorm of queries and keys may span: each head, or the whole projection.
QK_NORM_SCOPES = ("head", "projection")


class SelfAttention:
    """One layer's attention over flattened tokens: ``[T, hidden]`` normed input → ``[T, hidden]``.

    ``qkv_proj`` computes queries, keys and values in one GEMM; queries and keys are rotated in
    place in one pass; the backend writes the new keys/values to the paged cache and attends,
    within ``sliding_window`` when the layer has one (passed in the step's metadata). ``kv_hooks``
    (served adapters') may replace rows of the new keys/values first.
    """

    def __init__(
        self,
        qkv_proj: FusedLinear,
        o_proj: FusedLinear,
        backend: AttentionBackend,
        heads: AttentionHeads,
        *,
        sliding_window: int | None = None,
        qk_norm: tuple[torch.Tensor, torch.Tensor] | None = None,
        eps: float = 1e-6,
        qk_norm_scope: str = "head",
        clip_qkv: float | None = None,
    ) -> None:
        self.qkv_proj, self.o_proj, self.backend = qkv_proj, o_proj, backend
        self.num_heads, self.num_kv_heads, self.head_size = heads.num_heads, heads.num_kv_heads, heads.head_size
        self.sliding_window, self.qk_norm, self.eps = sliding_window, qk_norm, eps
        self.qk_norm_scope, self.clip_qkv = qk_norm_scope, clip_qkv
        self.kv_hooks: list[KVHook] = []

    @classmethod
    def load(
        cls,
        config: PreTrainedConfig,
        loader: WeightLoader,
        prefix: str,
        backend: AttentionBackend,
        options: AttentionOptions = AttentionOptions(),
    ) -> SelfAttention:
        """The block whose HF modules are ``{prefix}.q_proj``, ``.k_proj``, ``.v_proj``, ``.o_proj``
        (and ``.q_norm``/``.k_norm`` with ``options.qk_norm``), e.g. ``model.layers.0.self_attn``;
        under tensor parallelism (``loader.tp``) the rank's heads only (:func:`shard_heads`)."""
        full = AttentionHeads.from_config(config)
        shard = shard_heads(full, loader.tp)  # the whole of every projection at size 1
        heads, size = shard.heads, full.head_size
        q_size, kv_size = full.num_heads * size, full.num_kv_heads * size
        q_rows, k_rows, v_rows = qkv_rows(shard)
        qkv = {
            f"{prefix}.q_proj": (q_size, q_rows), f"{prefix}.k_proj": (kv_size, k_rows), f"{prefix}.v_proj": (kv_size, v_rows)
        }
        qk_norm = None
        if options.qk_norm:
            if options.qk_norm_scope != "head" and loader.tp.world_size > 1:
                raise UnsupportedModelError(
                    f"tensor_parallel_size {loader.tp.world_size}: {prefix} normalises queries and keys over the whole "
                    "projection (qk_norm_scope 'projection'), which would need one more all-reduce per layer; "
                    "not supported under tensor parallelism yet"
                )
            q_shape, k_shape = ((size,),) * 2 if options.qk_norm_scope == "head" else ((q_size,), (kv_size,))
            qk_norm = (
                loader.tensor(f"{prefix}.q_norm.weight", q_shape), loader.tensor(f"{prefix}.k_norm.weight", k_shape)
            )
        return cls(
            loader.column(qkv, config.hidden_size, options.qkv_bias),
            loader.row(f"{prefix}.o_proj", config.hidden_size, q_size, options.o_bias),
            backend,
            heads,
            sliding_window=options.sliding_window,
            qk_norm=qk_norm,
            eps=config.rms_norm_eps,
            qk_norm_scope=options.qk_norm_scope,
            clip_qkv=options.clip_qkv,
        )

    def __call__(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Attention of ``hidden`` (already normed) with this step's ``cos``/``sin``
        (:meth:`RotaryEmbedding.cos_sin_at`, computed once per step for every layer)."""
        tokens, heads, kv_heads, size = hidden.shape[0], self.num_heads, self.num_kv_heads, self.head_size
        qkv = self.qkv_proj(hidden)
        qk = qkv[:, : (heads + kv_heads) * size].view(tokens, heads + kv_heads, size)
        if self.qk_norm is not None:
            q_norm, k_norm = self.qk_norm
            if self.qk_norm_scope == "head":
                qk[:, :heads] = rms_norm(qk[:, :heads], q_norm, self.eps)
                qk[:, heads:] = rms_norm(qk[:, heads:], k_norm, self.eps)
            else:
                q, k = qkv[:, : heads * size], qkv[:, heads * size : (heads + kv_heads) * size]
                q.copy_(rms_norm(q, q_norm, self.eps))
                k.copy_(rms_norm(k, k_norm, self.eps))
        if self.clip_qkv is not None:
            qkv.clamp_(-self.clip_qkv, self.clip_qkv)
        RotaryEmbedding.rotate_(qk, cos, sin)  # q and k heads in one pass
        value = qkv[:, (heads + kv_heads) * size :].view(tokens, kv_heads, size)
        for hook in self.kv_hooks:
            hook(qk[:, heads:], value)
        layer_metadata = metadata.for_layer(self.sliding_window)
        out = self.backend.forward(qk[:, :heads], qk[:, heads:], value, kv_cache, layer_metadata)
        return self.o_proj(out.reshape(tokens, heads * size))

    def adapter_projections(self) -> dict[str, FusedLinear]:
        """The projections served adapters may act on, by name within the layer."""
        return {"qkv_proj": self.qkv_proj, "o_proj": self.o_proj}
