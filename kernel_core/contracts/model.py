"""The contract a model-architecture plugin implements: a forward over flattened tokens and paged KV."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.lora import LoRATarget


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
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, vocab]`` for the ``[N, hidden]`` rows that sample."""

    def lora_targets(self) -> Mapping[str, LoRATarget]:
        """The linear layers LoRA adapters may adapt while serving, by a stable key; an
        architecture without any cannot serve adapters (``enable_lora`` is refused)."""
        return {}
