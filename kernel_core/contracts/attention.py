"""The contract an attention backend plugin implements: causal attention over a paged KV cache."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch


@dataclass
class AttentionMetadata:
    """Where each scheduled token of a step lives, for all requests flattened into one batch.

    For request ``i``, its new tokens are rows ``query_start_loc[i]:query_start_loc[i+1]`` of
    the batch and are the last positions of a context of ``seq_lens[i]`` tokens, whose KV is
    (after this step's write) in blocks ``block_tables[i]``.

    ``sliding_window`` is the attending layer's: the model passes each layer
    :meth:`for_layer` of the step's metadata (plugin API 1.3).
    """

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset for each new token
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    block_size: int
    scale: float
    #: Host copies of ``seq_lens`` and the per-request query lengths, so that backends need no
    #: device-to-host sync per layer; filled from the tensors when not given.
    seq_lens_host: tuple[int, ...] = ()
    query_lens_host: tuple[int, ...] = ()
    #: Per-step scratch space: a backend may derive indices on the first layer and reuse them
    #: on the others (the same metadata object serves every layer of one step). Key entries by
    #: the backend's module name, so that two backends never collide.
    scratch: dict[str, Any] = field(default_factory=dict)
    #: A query at position q attends to the keys at positions p with ``q - sliding_window < p <= q``
    #: (Mistral's and Qwen2's windows, as transformers masks them); None: every p <= q.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if not self.seq_lens_host:
            self.seq_lens_host = tuple(self.seq_lens.tolist())
        if not self.query_lens_host:
            self.query_lens_host = tuple(self.query_start_loc.diff().tolist())

    def for_layer(self, sliding_window: int | None) -> AttentionMetadata:
        """This step's metadata for a layer attending within ``sliding_window``: ``self`` when the
        window is the same, else a view sharing every tensor and the ``scratch`` dict, made once
        per window per step, so that layers cost no new object and backends still derive
        their indices once per step (key them by window too)."""
        if sliding_window == self.sliding_window:
            return self
        views = self.scratch.setdefault(_WINDOW_VIEWS, {self.sliding_window: self})
        view = views.get(sliding_window)
        if view is None:
            view = views[sliding_window] = replace(self, sliding_window=sliding_window)
        return view


#: ``scratch`` key of the per-window views :meth:`AttentionMetadata.for_layer` makes.
_WINDOW_VIEWS = "kernel_core.contracts.attention.for_layer"


class AttentionBackend(ABC):
    """Writes the step's new keys and values into the paged cache, then attends causally."""

    #: Whether :meth:`forward` applies ``metadata.sliding_window`` (plugin API 1.3). The engine
    #: refuses to run a model with sliding-window layers on a backend that does not, rather than
    #: let it attend to the whole context and compute something else.
    supports_sliding_window: ClassVar[bool] = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run on this machine (say, its compiled kernel did not build), or
        None when it can. A platform's default that cannot run gives way to the portable ``torch``
        backend; one named by the ``attention_backend`` setting is refused with this reason."""
        return None

    @staticmethod
    def kv_cache_shape(
        num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        """Shape of one layer's KV cache tensor; index 0 selects keys or values."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Attention output ``[T, num_heads, head_size]``.

        Cache slots outside each request's first ``seq_lens[i]`` positions may hold anything,
        NaN included, and must never be read, not even under a mask (0 * NaN is NaN).
        ``query``/``key``/``value`` may be non-contiguous views (e.g. of a fused QKV output).

        ``query`` is ``[T, num_heads, head_size]``; ``key``/``value`` are
        ``[T, num_kv_heads, head_size]`` (grouped-query attention when fewer heads).

        With ``metadata.sliding_window`` set (only given to backends that declare
        :attr:`supports_sliding_window`), a query sees only the keys within the window.
        """
