"""Named buffers, one per adapter, for state a tuner keeps once per model on
``PeftModel.base_model`` (VeRA's and RandLoRA's shared random projections).

A :class:`BufferDict` named with the tuner's prefix follows the state-dict rule
(``base_model.vera_A.default`` in the model, ``base_model.vera_A`` in the file), and the core
deletes the adapter's entry with the adapter. A buffer is saved only when ``persistent`` (PEFT's
``save_projection=False`` leaves the projections out of the file; they are drawn again on load).
Since API 1.4 (additive).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class BufferDict(nn.Module):
    """Named buffers, one per adapter, each saved with the model or not."""

    def put(self, name: str, tensor: torch.Tensor, persistent: bool) -> None:
        """Add ``tensor`` as ``name``, in the state dict (and so the adapter file) if ``persistent``."""
        if name in self._buffers:
            del self[name]
        self.register_buffer(name, tensor, persistent=persistent)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._buffers[name]
        assert tensor is not None
        return tensor

    def __delitem__(self, name: str) -> None:
        del self._buffers[name]
        self._non_persistent_buffers_set.discard(name)

    def __contains__(self, name: object) -> bool:
        return name in self._buffers

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)
