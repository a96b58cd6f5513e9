"""The contract a model-architecture plugin implements: a forward over flattened tokens and paged KV."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.adapter_targets import EmbeddingHook, KVHook, ProjectionTarget


class ModelArchitecture(ABC):
    """A model family's forward pass, reading weights from a Hugging Face folder.

    Every scheduled token of every request arrives flattened into one ``[T]`` batch, so each
    linear layer runs as one GEMM per step; attention goes through the selected backend.
    """

    num_layers: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    #: The sliding windows its layers attend within, passed to the backend per layer through
    #: ``AttentionMetadata.for_layer`` (plugin API 1.3); empty when every layer attends to the
    #: whole context. The engine refuses a backend without ``supports_sliding_window`` otherwise.
    sliding_windows: frozenset[int] = frozenset()

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        folder: Path,
        *,
        attention: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
    ) -> ModelArchitecture:
        """Build the model from ``config.json`` and safetensors weights in ``folder``.

        A plugin running mixture-of-experts models may add a keyword parameter
        ``moe: kernel_core.modeling.moe.MoEOptions | None`` (plugin API 1.3): the engine passes
        the selected MoE kernel and expert quantization only when the signature names it.
        """

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` for the ``[T]`` tokens at ``positions``."""

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits ``[N, vocab]`` for the ``[N, hidden]`` rows that sample. A model split by tensor
        parallelism returns them on rank 0, which samples, and may return None on the other ranks
        (plugin API 1.7): every rank calls it, so a collective may assemble them."""

    def prepare_weights(self, prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace each ``[out, in]`` weight the model multiplies through ``kernel_core.modeling.linear``
        by ``prepare(weight)``, the layout the platform's GEMM policy runs fastest (plugin API 1.5;
        the engine calls it once, after loading). Default: nothing, the weights stay as loaded."""

    # -- where served adapters act (plugin API 1.5, kernel_core.contracts.adapter_targets) ------

    def adapter_targets(self) -> Mapping[str, ProjectionTarget]:
        """The linear layers served adapters may act on (low-rank updates, scaling vectors), by a
        stable key such as ``model.layers.0.qkv_proj``; a kind needing them is refused on a model
        without any.
        Plugins written for API 1.3-1.4 named this ``lora_targets``: it is still read."""
        legacy = getattr(self, "lora_targets", None)
        return legacy() if legacy is not None else {}

    def embedding_hooks(self) -> list[EmbeddingHook] | None:
        """The list of hooks the model runs on its ``[T, hidden]`` token embeddings before the
        first layer (servings append to it); None when the model offers no such place."""
        return None

    def kv_hooks(self) -> Sequence[list[KVHook]]:
        """Per attention layer, the list of hooks the model runs on that layer's new keys
        (after RoPE) and values before the cache write; empty when the model offers none."""
        return ()
