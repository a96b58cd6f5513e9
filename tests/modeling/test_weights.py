"""SafetensorsCheckpoint: tensors by name from one file or an index of shards; errors name the culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kernel_core.errors import InvalidModelFolderError
from kernel_core.modeling import SafetensorsCheckpoint

CPU = torch.device("cpu")


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    save_file({"a.weight": torch.arange(6.0).view(3, 2)}, tmp_path / "one.safetensors")
    save_file({"b.weight": torch.ones(2, 2), "b.bias": torch.zeros(2)}, tmp_path / "two.safetensors")
    weight_map = {"a.weight": "one.safetensors", "b.weight": "two.safetensors", "b.bias": "two.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path


def test_read_stacks_tensors_across_shards_and_tracks_unread(sharded: Path) -> None:
    with SafetensorsCheckpoint(sharded) as checkpoint:
        stacked = checkpoint.read(["a.weight", "b.weight"], [(3, 2), (2, 2)], torch.float64, CPU)
        assert checkpoint.unread() == ["b.bias"]
    assert stacked.dtype == torch.float64
    assert torch.equal(stacked, torch.cat((torch.arange(6.0).view(3, 2), torch.ones(2, 2))).double())


def test_missing_shard_is_named(sharded: Path) -> None:
    (sharded / "two.safetensors").unlink()
    with pytest.raises(InvalidModelFolderError, match="shards that are not in the folder: two.safetensors"):
        SafetensorsCheckpoint(sharded)


def test_missing_tensor_and_wrong_shape_are_named(sharded: Path) -> None:
    with SafetensorsCheckpoint(sharded) as checkpoint:
        with pytest.raises(InvalidModelFolderError, match="missing the tensor 'c.weight'"):
            checkpoint.read(["c.weight"], [(1,)], torch.float32, CPU)
        with pytest.raises(InvalidModelFolderError, match=r"'a.weight' in one.safetensors has shape \[3, 2\], expected \[2, 3\]"):
            checkpoint.read(["a.weight"], [(2, 3)], torch.float32, CPU)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InvalidModelFolderError, match=r"no \*\.safetensors"):
        SafetensorsCheckpoint(tmp_path)
