"""Read a Hugging Face folder's safetensors weights by parameter name, sharded or not.

safetensors never unpickles, so loading a model folder cannot run code. Tensors are read one at
a time and copied straight into their final (possibly fused) place, so peak memory stays near
the model's size. Public (:mod:`kernel_core.modeling`, plugin API 1.3), so that every model plugin
reads weights with the same guarantees and errors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kernel_core.errors import InvalidModelFolderError

INDEX_FILE = "model.safetensors.index.json"


class SafetensorsCheckpoint:
    """The tensors of ``folder``: ``model.safetensors.index.json`` names the shards when present,
    otherwise every ``*.safetensors`` file is read. Use as a context manager (files stay open)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._files = ExitStack()
        self._handles: dict[Path, Any] = {}
        self.locations = self._locate()
        self.read_names: set[str] = set()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._files.close()

    def _locate(self) -> dict[str, Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            missing = sorted({file for file in weight_map.values() if not (self.folder / file).is_file()})
            if missing:
                raise InvalidModelFolderError(f"{index} lists shards that are not in the folder: {', '.join(missing)}")
            return {name: self.folder / file for name, file in weight_map.items()}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise InvalidModelFolderError(f"model folder {self.folder} has no *.safetensors weights")
        return {name: file for file in files for name in self._handle(file).keys()}

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            self._handles[file] = self._files.enter_context(safe_open(file, framework="pt", device="cpu"))
        return self._handles[file]

    def unread(self) -> list[str]:
        """Names in the checkpoint that no :meth:`read` asked for, sorted."""
        return sorted(set(self.locations) - self.read_names)

    def read(
        self, names: Sequence[str], shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The tensors ``names`` stacked along dim 0 into one new tensor (fusing projections at
        load time); each must have its ``shapes`` entry, or the error names it."""
        rows = sum(shape[0] for shape in shapes)
        out = torch.empty((rows, *shapes[0][1:]), dtype=dtype, device=device)
        start = 0
        for name, shape in zip(names, shapes, strict=True):
            out[start : start + shape[0]].copy_(self._tensor(name, shape))
            start += shape[0]
        return out

    def lazy(self, name: str, shape: tuple[int, ...]) -> Any:
        """The tensor ``name`` (of ``shape``) unread: safetensors' slice, which reads only what is
        indexed (``[a:b]``, ``[:, a:b]``), so a tensor-parallel rank loads only its shard."""
        checked = self._checked_slice(name, shape)
        self.read_names.add(name)
        return checked

    def _tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        self.lazy(name, shape)
        return self._handle(self.locations[name]).get_tensor(name)

    def _checked_slice(self, name: str, shape: tuple[int, ...]) -> Any:
        if name not in self.locations:
            raise InvalidModelFolderError(f"model folder {self.folder} is missing the tensor {name!r}")
        handle = self._handle(self.locations[name])
        found = tuple(handle.get_slice(name).get_shape())
        if found != tuple(shape):
            raise InvalidModelFolderError(
                f"tensor {name!r} in {self.locations[name].name} has shape {list(found)}, "
                f"expected {list(shape)} from config.json"
            )
        return handle.get_slice(name)
