"""Serving prompt-learning adapters (plugin API 1.5): the two ready kinds of
:mod:`kernel_core.contracts.prompt`, on the serving seam (:mod:`kernel_core.contracts.serving`).

A prompt-learning adapter has ``V`` virtual tokens (:attr:`ServedAdapter.num_virtual_tokens`): the
engine puts ``V`` placeholder tokens at positions ``0 .. V - 1`` of each of its requests, the
prompt after them, as PEFT counts them. The PEFT file holds one table, ``prompt_embeddings`` (the
encoder's output, whatever encoder computed it: PEFT saves P-tuning's MLP or LSTM output and a
prefix projection's output, not the encoder):

- :class:`VirtualTokensServing` (prompt tuning, P-tuning): the table is ``[V, hidden]``; an
  embedding hook replaces the placeholders' embeddings with its rows;
- :class:`PastKeyValuesServing` (prefix tuning): the table is ``[V, num_layers * 2 * kv_dim]``,
  per token layer 0's keys then values, then layer 1's, ...; each layer's KV hook replaces the
  placeholders' new keys and values with them before the paged-cache write, so later tokens
  attend to the prefix as to PEFT's ``past_key_values`` (keys as the cache holds them: no RoPE
  is applied to them).

Slots hold up to ``max_virtual_tokens`` (an engine setting) virtual tokens each; an adapter with
more is refused at load. A method with another table layout subclasses one and overrides
:meth:`PromptServing.rows`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kernel_core.contracts.prompt import PROMPT_EMBEDDINGS
from kernel_core.contracts.serving import NO_SLOT, AdapterServing, ServedAdapter, ServingContext, SlotBatch
from kernel_core.errors import AdapterLoadError

__all__ = ["PastKeyValuesServing", "PromptServing", "ServedPrompt", "VirtualTokensServing"]

#: ``max_virtual_tokens`` when the engine's settings do not say.
DEFAULT_MAX_VIRTUAL_TOKENS = 64


@dataclass
class ServedPrompt(ServedAdapter):
    """One adapter's virtual tokens: ``rows`` ``[V, *row_shape]`` in the served dtype."""

    rows: torch.Tensor
    num_virtual_tokens: int = 0

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes


class PromptServing(AdapterServing):
    """Slots ``[max_slots, max_virtual_tokens, *row_shape]`` and, per step, which rows of the
    step are which slot's virtual tokens; subclasses say the row shape and install the hooks."""

    @classmethod
    @abstractmethod
    def row_shape(cls, model: Any) -> tuple[int, ...] | None:
        """The shape of one virtual token's served data for ``model``; None when the model
        offers no place for it (its adapters are then refused at load, not the engine)."""

    #: Why the model cannot serve this kind (None: it can), said at load.
    unavailable: str | None = None
    #: What the model must offer, for that message.
    place = ""

    @classmethod
    def max_virtual_tokens(cls, context: ServingContext) -> int:
        return int(context.settings.get("max_virtual_tokens") or DEFAULT_MAX_VIRTUAL_TOKENS)

    @classmethod
    def slot_nbytes(cls, model: Any, context: ServingContext) -> int:
        shape = cls.row_shape(model)
        return 0 if shape is None else context.max_slots * cls.max_virtual_tokens(context) * _numel(shape) * context.dtype.itemsize

    def __init__(self, model: Any, context: ServingContext) -> None:
        shape = self.row_shape(model)
        if shape is None:
            self.unavailable = f"the {type(model).__name__} model plugin offers no {self.place} (plugin API 1.5)"
        self.shape, self.dtype = shape or (0,), context.dtype
        #: One virtual token's data as the adapter file holds it (the unsharded model's).
        self.file_shape = self.shape
        self.max_tokens = self.max_virtual_tokens(context)
        self.table = torch.zeros(
            context.max_slots, self.max_tokens, *self.shape, dtype=context.dtype, device=context.device
        )
        self.counts = torch.zeros(context.max_slots, dtype=torch.int64, device=context.device)
        #: This step's placeholder rows and the (slot, position) each takes its data from.
        self.where: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def rows(self, table: torch.Tensor, config: Any, where: str) -> torch.Tensor:
        """The file's table as ``[V, *row_shape]``; :class:`AdapterLoadError` names a mismatch."""
        expected = (config.num_virtual_tokens, _numel(self.file_shape))
        if tuple(table.shape) != expected:
            raise AdapterLoadError(
                f"{where}: {PROMPT_EMBEDDINGS} has shape {tuple(table.shape)}, but num_virtual_tokens="
                f"{config.num_virtual_tokens} on the served model makes {expected} (saved for another base model?)"
            )
        return table.reshape(config.num_virtual_tokens, *self.file_shape)

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """``[V, *file_shape]`` rows cut to what this rank's slots hold (``[V, *row_shape]``):
        unchanged unless the model is split by tensor parallelism."""
        return rows

    def convert(self, name: str, config: Any, tensors: Mapping[str, torch.Tensor], where: str) -> ServedPrompt:
        if self.unavailable is not None:
            raise AdapterLoadError(f"{where}: cannot be served: {self.unavailable}")
        if set(tensors) != {PROMPT_EMBEDDINGS}:
            raise AdapterLoadError(
                f"{where}: a prompt-learning file holds exactly {PROMPT_EMBEDDINGS!r}; this one holds {sorted(tensors)}"
            )
        if getattr(config, "num_transformer_submodules", 1) not in (None, 1):
            raise AdapterLoadError(f"{where}: num_transformer_submodules must be 1 (a decoder-only model)")
        count = config.num_virtual_tokens
        if count > self.max_tokens:
            raise AdapterLoadError(
                f"{where}: {count} virtual tokens exceed max_virtual_tokens {self.max_tokens}; raise max_virtual_tokens"
            )
        rows = self.rows(tensors[PROMPT_EMBEDDINGS], config, where)
        return ServedPrompt(rows=rows.to(self.dtype).contiguous(), num_virtual_tokens=count)

    def write(self, slot: int, adapter: ServedAdapter) -> None:
        assert isinstance(adapter, ServedPrompt)
        self.table[slot, : adapter.num_virtual_tokens].copy_(self.shard(adapter.rows))
        self.counts[slot] = adapter.num_virtual_tokens

    def begin_step(self, batch: SlotBatch | None) -> None:
        self.where = None
        if batch is None or batch.positions is None:
            return
        slots = batch.token_slots
        mine = slots != NO_SLOT
        virtual = mine & (batch.positions < self.counts[slots.clamp(min=0)])
        rows = virtual.nonzero().flatten()
        if rows.numel():
            self.where = (rows, slots[rows], batch.positions[rows])

    def replace(self, target: torch.Tensor, data: torch.Tensor) -> None:
        """Rows of ``target`` at this step's virtual tokens become ``data[slot, position]``."""
        if self.where is not None:
            rows, slots, positions = self.where
            target[rows] = data[slots, positions].to(target.dtype)


class VirtualTokensServing(PromptServing):
    """Prompt tuning and P-tuning: virtual-token embeddings ``[V, hidden]``, put in place of the
    placeholders' token embeddings before the first layer (whole on every tensor-parallel rank)."""

    supports_tensor_parallel = True

    place = "embedding hooks (ModelArchitecture.embedding_hooks) or hidden_size"

    @classmethod
    def row_shape(cls, model: Any) -> tuple[int, ...] | None:
        hidden = getattr(model, "hidden_size", None)
        return (hidden,) if hidden is not None and model.embedding_hooks() is not None else None

    def __init__(self, model: Any, context: ServingContext) -> None:
        super().__init__(model, context)
        if self.unavailable is None:
            model.embedding_hooks().append(self._embeddings)

    def _embeddings(self, hidden: torch.Tensor) -> None:
        self.replace(hidden, self.table)


class PastKeyValuesServing(PromptServing):
    """Prefix tuning: per layer, ``V`` keys and values ``[kv_heads, head_size]``, put in place
    of the placeholders' new keys and values before the cache write."""

    place = "KV hooks on every layer (ModelArchitecture.kv_hooks)"
    supports_tensor_parallel = True

    @classmethod
    def row_shape(cls, model: Any) -> tuple[int, ...] | None:
        if len(model.kv_hooks()) != model.num_layers:
            return None
        return (model.num_layers, 2, model.num_kv_heads, model.head_size)

    def __init__(self, model: Any, context: ServingContext) -> None:
        super().__init__(model, context)
        #: Under tensor parallelism the file holds every KV head, a rank's cache some
        #: (``total_kv_heads``, ``kv_heads_held``: ``kernel_core.modeling.DecoderModel``'s).
        self.kv_heads_held = getattr(model, "kv_heads_held", slice(None))
        if self.unavailable is None:
            layers, pair, _, size = self.shape
            self.file_shape = (layers, pair, getattr(model, "total_kv_heads", model.num_kv_heads), size)
        for layer, hooks in enumerate(model.kv_hooks() if self.unavailable is None else ()):
            hooks.append(_LayerPrefix(self, layer))


    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, :, :, self.kv_heads_held]


class _LayerPrefix:
    """One layer's KV hook of a :class:`PastKeyValuesServing`."""

    def __init__(self, serving: PastKeyValuesServing, layer: int) -> None:
        self.serving, self.layer = serving, layer

    def __call__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        table = self.serving.table
        self.serving.replace(key, table[:, :, self.layer, 0])
        self.serving.replace(value, table[:, :, self.layer, 1])


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
