"""The public model-building surface: the blocks a model-architecture plugin builds its forward from.

Part of plugin API 1.3 (``kernel_core.PLUGIN_API_VERSION``): names here change only as the
contracts do, so a model plugin written against them keeps working on every 1.x. It holds no
model family; families live in plugins (``kernel-core-llama`` runs Llama, Mistral and Qwen2/3
on these blocks alone). Everything works on flattened tokens, all requests of a step in one
``[T, ...]`` batch, so each projection is one GEMM per step.

- :class:`DecoderModel`: the pre-norm decoder skeleton; subclass it and say what differs.
- :class:`SelfAttention` (with :class:`AttentionHeads`, :class:`AttentionOptions`) and
  :class:`GatedMLP`: the blocks of a layer.
- :class:`FusedLinear`, :class:`RotaryEmbedding`, :func:`linear`: the layers under them.
- :class:`SafetensorsCheckpoint` and :class:`WeightLoader`: weights by Hugging Face name.
- :class:`FusedMoE` (with :class:`ExpertWeights`, :class:`MoEOptions`): a mixture-of-experts
  layer on the engine's selected MoE kernel, int8 experts included.
- :mod:`kernel_core.modeling.parallel`: tensor parallelism (:class:`TensorParallel`, column/row-parallel
  linears, vocab-parallel embedding and lm_head, KV-head, low-rank-factor and expert sharding rules;
  docs/distributed.md).
"""

from kernel_core.modeling.attention import AttentionHeads, AttentionOptions, SelfAttention
from kernel_core.modeling.decoder import DecoderLayer, DecoderModel, MLPBlock
from kernel_core.modeling.gemm import linear
from kernel_core.modeling.layers import FusedLinear, RotaryEmbedding
from kernel_core.modeling.loader import WeightLoader
from kernel_core.modeling.mlp import GatedMLP
from kernel_core.modeling.moe import ExpertWeights, FusedMoE, MoEOptions
from kernel_core.modeling.parallel import (
    SINGLE,
    ColumnParallelLinear,
    HeadShard,
    ParallelLMHead,
    RowParallelLinear,
    TensorParallel,
    TensorParallelMoE,
    VocabParallelEmbedding,
    expert_shard,
    qkv_rows,
    shard_experts,
    shard_heads,
    shard_low_rank_column,
    shard_low_rank_row,
    vocab_range,
)
from kernel_core.modeling.weights import SafetensorsCheckpoint

__all__ = [
    "SINGLE",
    "AttentionHeads",
    "AttentionOptions",
    "ColumnParallelLinear",
    "DecoderLayer",
    "DecoderModel",
    "ExpertWeights",
    "FusedLinear",
    "FusedMoE",
    "GatedMLP",
    "HeadShard",
    "MLPBlock",
    "MoEOptions",
    "ParallelLMHead",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SafetensorsCheckpoint",
    "SelfAttention",
    "TensorParallel",
    "TensorParallelMoE",
    "VocabParallelEmbedding",
    "WeightLoader",
    "expert_shard",
    "linear",
    "qkv_rows",
    "shard_experts",
    "shard_heads",
    "shard_low_rank_column",
    "shard_low_rank_row",
    "vocab_range",
]
