"""The trainable-tokens layer: per adapter, trained values (``trainable_tokens_delta``, PEFT's
name: they are the rows themselves, not a difference) for the rows ``token_indices`` of the
wrapped weight, and those rows' values from before (``trainable_tokens_original``, not saved),
to restore them on unmerge.

The layer computes with the weight whose rows are replaced, as PEFT does: an ``nn.Embedding``
looks tokens up in it (with the module's options and, for scaled embeddings such as Gemma's,
its ``embed_scale``), an ``nn.Linear`` (a head) multiplies by it. Rows are replaced, not added
to, so the result does not depend on what the rows held when training started (PEFT's reason).

A head tied to the embedding (the same weight) gets a layer *tied* to the embedding's: it holds
the embedding layer's containers, so its output uses the same trained rows, and saving writes
them under both modules, as PEFT does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_core.contracts.buffers import BufferDict
from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_trainable_tokens.config import TrainableTokensConfig


class TrainableTokensLayer(TunerLayer):
    """Trainable rows of an ``nn.Embedding`` or an ``nn.Linear`` (a head: its rows are output tokens)."""

    def __init__(self, base_layer: nn.Embedding | nn.Linear, adapter_name: str, config: TrainableTokensConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.trainable_tokens_delta = nn.ParameterDict()
        self.trainable_tokens_original = BufferDict()
        self.token_indices: dict[str, list[int]] = {}
        self._source: list[TrainableTokensLayer] = []  # a list, so that a tied layer does not own its source
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @classmethod
    def tied(cls, base_layer: nn.Embedding | nn.Linear, source: TrainableTokensLayer) -> TrainableTokensLayer:
        """A layer around ``base_layer``, whose weight is ``source``'s, using ``source``'s adapters."""
        layer = cls.__new__(cls)
        TunerLayer.__init__(layer, base_layer.requires_grad_(False))
        layer.trainable_tokens_delta = source.trainable_tokens_delta
        layer.trainable_tokens_original = source.trainable_tokens_original
        layer.token_indices = source.token_indices
        layer._source = [source]
        layer.set_adapter(source.active_adapters)
        return layer

    @property
    def source(self) -> TrainableTokensLayer | None:
        """The embedding layer this one is tied to, or None for a layer with its own adapters."""
        return self._source[0] if self._source else None

    @property
    def adapter_names(self) -> list[str]:
        return list(self.trainable_tokens_delta)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, TrainableTokensConfig):
            raise TypeError(f"trainable tokens need a TrainableTokensConfig, got {type(config).__name__}")
        if self.source is not None:
            return  # a tied layer follows its source, which holds the adapter
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        weight = self.base_layer.weight
        vocabulary = weight.shape[0]
        outside = [index for index in config.token_indices if index >= vocabulary]
        if outside:
            module = config.module_name or type(self.base_layer).__name__
            raise ValueError(f"token indices {outside} are outside the vocabulary of {module!r} ({vocabulary} tokens)")
        originals = weight[config.token_indices].detach().clone()
        # As PEFT: the rows' current values (the identity), or random ones of the weight's type, for tests.
        values = originals if config.init_weights else torch.randn(originals.shape, dtype=weight.dtype, device=weight.device)
        self.trainable_tokens_delta[adapter_name] = nn.Parameter(values.clone())
        self.trainable_tokens_original.put(adapter_name, originals, persistent=False)
        self.token_indices[adapter_name] = list(config.token_indices)
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.trainable_tokens_delta:  # a tied layer shares these: either deletes once
            del self.trainable_tokens_delta[adapter_name]
            del self.trainable_tokens_original[adapter_name]
            del self.token_indices[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """With active, unmerged adapters and no mixed batch: the output with their rows, computed
        once (the base class then only disables, serves merged weights or mixed batches)."""
        if self.disable_adapters or self.merged or self.row_adapters is not None or not self.active_adapters:
            return super().forward(x, *args, **kwargs)
        return self._output(x, self.active_adapters)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A mixed batch's rows for ``adapter_name``: the output with its rows, computed whole as
        PEFT computes it (``result``, the base output, is not reused)."""
        return self._output(x, [adapter_name])

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Write the adapters' rows into the base weight (a tied layer writes the same rows into
        the same weight again)."""
        names = [
            name for name in (self.active_adapters if adapter_names is None else adapter_names)
            if name in self.adapter_names and name not in self.merged_adapters
        ]
        if not names:
            return
        self._check_disjoint([*self.merged_adapters, *names])
        weight = self.base_layer.weight
        weight.data = self._with_rows(weight.data, names)
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """Put the rows from before back, last merged first."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            index = torch.tensor(self.token_indices[name], dtype=torch.long, device=weight.device)
            weight.data.index_copy_(0, index, self.trainable_tokens_original[name].to(weight))

    def _output(self, x: torch.Tensor, adapter_names: Sequence[str]) -> torch.Tensor:
        self._check_disjoint(adapter_names)
        base = self.base_layer
        weight = self._with_rows(base.weight, adapter_names)
        if isinstance(base, nn.Linear):
            return F.linear(x, weight, base.bias)
        result = F.embedding(x, weight, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse)
        scale = getattr(base, "embed_scale", None)  # embeddings that scale their output (Gemma's)
        if scale is None:
            return result
        return result * torch.as_tensor(scale, dtype=weight.dtype, device=weight.device).to(result.dtype)

    def _with_rows(self, weight: torch.Tensor, adapter_names: Sequence[str]) -> torch.Tensor:
        """``weight`` with each adapter's trained rows in place of its token rows (a new tensor)."""
        for name in adapter_names:
            index = torch.tensor(self.token_indices[name], dtype=torch.long, device=weight.device)
            weight = weight.index_copy(0, index, self.trainable_tokens_delta[name].to(weight))
        return weight

    def _check_disjoint(self, adapter_names: Sequence[str]) -> None:
        """As PEFT: two adapters acting at once may not both write one row."""
        seen: set[int] = set()
        for name in dict.fromkeys(adapter_names):
            overlap = seen.intersection(self.token_indices[name])
            if overlap:
                raise ValueError(
                    f"adapter {name!r} trains token indices {sorted(overlap)} that another active or merged adapter "
                    "trains too; adapters acting at once need disjoint token_indices"
                )
            seen.update(self.token_indices[name])
