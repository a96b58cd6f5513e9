"""Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE as :class:`~kernel_core.modeling.DecoderModel` subclasses: the
decoder, attention and weight loading are the public surface's; what is said here is which layers
are sparse, where their router and experts are in the checkpoint, how tokens are routed and, for
Qwen2-MoE, the shared expert, each as the family's transformers class builds it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch
from transformers import PreTrainedConfig

from kernel_core.contracts.attention import AttentionBackend
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core.modeling import (
    AttentionOptions,
    DecoderModel,
    FusedLinear,
    FusedMoE,
    GatedMLP,
    MLPBlock,
    MoEOptions,
    SINGLE,
    SafetensorsCheckpoint,
    TensorParallel,
    WeightLoader,
)
from kernel_core_moe_models.experts import ExpertNames, ExpertShape, load_experts
from kernel_core_moe_models.plugin import FAMILIES


class MoEBlock:
    """A sparse layer's MLP: the :class:`FusedMoE` layer, and its shared expert's projections
    offered to served adapters (the routed experts are not adapter targets)."""

    def __init__(self, moe: FusedMoE, shared_expert: GatedMLP | None = None, tp: TensorParallel = SINGLE) -> None:
        self.moe, self.shared_expert, self.tp = moe, shared_expert, tp

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Under tensor parallelism the experts' (and the shared expert's) partial sums, completed
        by one all-reduce per layer (:class:`~kernel_core.modeling.TensorParallelMoE`)."""
        return self.tp.all_reduce(self.moe(hidden))

    def adapter_projections(self) -> dict[str, FusedLinear]:
        """The shared expert's projections, by name within the layer (none without one)."""
        if self.shared_expert is None:
            return {}
        return {f"shared_expert.{name}": proj for name, proj in self.shared_expert.adapter_projections().items()}


class SparseMoEModel(DecoderModel):
    """A decoder whose sparse layers' MLP is a :class:`FusedMoE` on the engine's MoE kernel
    (``moe``: the kernel and expert quantization; None selects the default kernel for the device).

    Subclasses name their config fields and checkpoint names (class attributes) and may override
    :meth:`sparse_layers`, :meth:`moe_prefix`, :meth:`renormalize` and :meth:`shared_expert`.
    """

    #: config.json field holding the number of routed experts, and the one holding their width.
    num_experts_field: ClassVar[str]
    expert_size_field: ClassVar[str]
    #: The per-expert projection names of the family's Hub checkpoints.
    expert_names: ClassVar[ExpertNames] = ExpertNames("gate_proj", "up_proj", "down_proj")

    def __init__(
        self,
        config: PreTrainedConfig,
        checkpoint: SafetensorsCheckpoint,
        attention: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
        moe: MoEOptions | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        self.sparse = self.sparse_layers(config)
        self._check_routing(config)
        self.moe_options = moe or MoEOptions.select(device)
        self.moe_layers: dict[int, FusedMoE] = {}
        super().__init__(config, checkpoint, attention, dtype, device, tp)

    @classmethod
    def from_pretrained(
        cls,
        folder: Path,
        *,
        attention: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
        moe: MoEOptions | None = None,
        tp: TensorParallel = SINGLE,
    ) -> DecoderModel:
        """The model of ``folder`` (this rank's shard under ``tp``); naming ``moe`` here is what
        makes the engine pass its ``moe_kernel``/``moe_quantization`` settings."""
        return super().from_pretrained(folder, attention=attention, dtype=dtype, device=device, moe=moe, tp=tp)

    # --- what a family says -----------------------------------------------------------------------

    @classmethod
    def sparse_layers(cls, config: PreTrainedConfig) -> frozenset[int]:
        """The layers whose MLP is routed experts. Default (Qwen-MoE): every ``decoder_sparse_step``-th
        layer not in ``mlp_only_layers``, none when ``num_experts`` is 0."""
        step = config.decoder_sparse_step
        if not isinstance(step, int) or step < 1:
            raise InvalidModelFolderError(f"decoder_sparse_step {step!r} in config.json must be a positive integer")
        if getattr(config, cls.num_experts_field) == 0:
            return frozenset()
        dense = set(config.mlp_only_layers or ())
        return frozenset(i for i in range(config.num_hidden_layers) if i not in dense and (i + 1) % step == 0)

    def moe_prefix(self, prefix: str, loader: WeightLoader) -> str:
        """Where layer's router and experts are in the checkpoint (default: the MLP's ``prefix``)."""
        return prefix

    def renormalize(self) -> bool:
        """Whether the top-k routing weights are rescaled to sum to 1 (default: ``norm_topk_prob``)."""
        return bool(self.config.norm_topk_prob)

    def shared_expert(self, prefix: str, loader: WeightLoader) -> tuple[GatedMLP | None, torch.Tensor | None]:
        """The expert every token goes through and its gate weight ``[1, H]``. Default: none. Under
        tensor parallelism its down projection must leave the all-reduce to the layer
        (``GatedMLP.load(..., reduce=False)``), which sums it with the routed experts' partial sums."""
        return None, None

    # --- the sparse layers ------------------------------------------------------------------------

    def build_mlp(self, index: int, prefix: str, loader: WeightLoader) -> MLPBlock:
        if index not in self.sparse:
            return super().build_mlp(index, prefix, loader)
        config, where = self.config, self.moe_prefix(prefix, loader)
        shape = ExpertShape(
            getattr(config, self.num_experts_field), config.hidden_size, getattr(config, self.expert_size_field)
        )
        router = loader.tensor(f"{where}.gate.weight", (shape.num_experts, shape.hidden_size))
        loader.slices[f"{prefix}.gate.weight"] = loader.slices[f"{where}.gate.weight"]
        experts = load_experts(loader, where, self.expert_names, shape, self.moe_options.quantization, module=prefix)
        shared, shared_gate = self.shared_expert(where, loader)
        moe = FusedMoE(
            router, experts, top_k=config.num_experts_per_tok, renormalize=self.renormalize(),
            kernel=self.moe_options.kernel, shared_expert=shared, shared_expert_gate=shared_gate, name=where,
        )
        self.moe_layers[index] = moe
        return MoEBlock(moe, shared, self.tp)

    @property
    def expert_nbytes(self) -> int:
        """Bytes of every routed expert's weights (what ``moe_quantization`` shrinks)."""
        return sum(moe.nbytes for moe in self.moe_layers.values())

    def _check_routing(self, config: PreTrainedConfig) -> None:
        """Refuse, naming the config field, routing the kernels cannot run, before reading weights."""
        if not self.sparse:
            return
        if config.hidden_act != "silu":
            raise UnsupportedModelError(f"hidden_act {config.hidden_act!r} in config.json is not supported (only silu)")
        experts, top_k = getattr(config, self.num_experts_field), config.num_experts_per_tok
        if not isinstance(experts, int) or experts < 1:
            raise InvalidModelFolderError(f"{self.num_experts_field} {experts!r} in config.json must be at least 1")
        if not isinstance(top_k, int) or not 1 <= top_k <= experts:
            raise InvalidModelFolderError(
                f"num_experts_per_tok {top_k!r} in config.json must be between 1 and "
                f"{self.num_experts_field} ({experts})"
            )


class MixtralModel(SparseMoEModel):
    """Mixtral: every layer sparse, routing always renormalised, no biases, the ``sliding_window``
    (when set) on every layer; the Hub's ``block_sparse_moe.experts.{e}.w1/w3/w2`` or transformers
    5's fused ``mlp.experts`` layout."""

    supported_architectures = FAMILIES["mixtral"][0]
    num_experts_field = "num_local_experts"
    expert_size_field = "intermediate_size"
    expert_names = ExpertNames("w1", "w3", "w2")

    @classmethod
    def sparse_layers(cls, config: PreTrainedConfig) -> frozenset[int]:
        return frozenset(range(config.num_hidden_layers))

    def moe_prefix(self, prefix: str, loader: WeightLoader) -> str:
        hub = prefix.removesuffix(".mlp") + ".block_sparse_moe"
        return hub if f"{hub}.gate.weight" in loader.checkpoint.locations else prefix

    def renormalize(self) -> bool:
        return True


class Qwen2MoeModel(SparseMoEModel):
    """Qwen2-MoE: q/k/v biased per ``qkv_bias`` (o_proj never), windows on ``sliding_attention``
    layers, a shared expert of ``shared_expert_intermediate_size`` scaled by the sigmoid of
    ``shared_expert_gate``, dense layers per ``mlp_only_layers``/``decoder_sparse_step``."""

    supported_architectures = FAMILIES["qwen2-moe"][0]
    num_experts_field = "num_experts"
    expert_size_field = "moe_intermediate_size"

    def attention_options(self, index: int) -> AttentionOptions:
        return replace(super().attention_options(index), qkv_bias=bool(self.config.qkv_bias), o_bias=False)

    def shared_expert(self, prefix: str, loader: WeightLoader) -> tuple[GatedMLP | None, torch.Tensor | None]:
        size = self.config.shared_expert_intermediate_size
        if not size:
            return None, None
        mlp = GatedMLP.load(self.config, loader, f"{prefix}.shared_expert", intermediate_size=size, reduce=False)
        return mlp, loader.tensor(f"{prefix}.shared_expert_gate.weight", (1, self.config.hidden_size))


class Qwen3MoeModel(SparseMoEModel):
    """Qwen3-MoE: biases per ``attention_bias``, RMSNorm of each query/key head, the window (when
    ``use_sliding_window``) on every layer, no shared expert, dense layers as Qwen2-MoE."""

    supported_architectures = FAMILIES["qwen3-moe"][0]
    num_experts_field = "num_experts"
    expert_size_field = "moe_intermediate_size"

    def attention_options(self, index: int) -> AttentionOptions:
        return replace(super().attention_options(index), qk_norm=True)


class OlmoeModel(SparseMoEModel):
    """OLMoE: every layer sparse, renormalised per ``norm_topk_prob``, biases per ``attention_bias``,
    RMSNorm of the whole q and k projections (not of each head), q/k/v clamped to ``clip_qkv``."""

    supported_architectures = FAMILIES["olmoe"][0]
    num_experts_field = "num_experts"
    expert_size_field = "intermediate_size"

    @classmethod
    def sparse_layers(cls, config: PreTrainedConfig) -> frozenset[int]:
        return frozenset(range(config.num_hidden_layers))

    def attention_options(self, index: int) -> AttentionOptions:
        return replace(
            super().attention_options(index), qk_norm=True, qk_norm_scope="projection", clip_qkv=self.config.clip_qkv
        )
