"""Checkpoints: nested state survives the trip through JSON + safetensors, writes are atomic, the
latest complete checkpoint is found, and a bad folder fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kernel_core.errors import CheckpointError
from kernel_core.finetune import checkpoint


def _adam_after_two_steps() -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    torch.manual_seed(0)
    parameter = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1, betas=(0.8, 0.9))
    for _ in range(2):
        parameter.grad = torch.randn(3, 2)
        optimizer.step()
    return parameter, optimizer


def _roundtrip(value: object) -> object:
    tensors: dict[str, torch.Tensor] = {}
    document = json.loads(json.dumps(checkpoint.flatten(value, tensors, "x.")))
    return checkpoint.unflatten(document, tensors)


def test_optimizer_state_roundtrips_and_the_optimizer_continues_identically() -> None:
    parameter, optimizer = _adam_after_two_steps()
    state = optimizer.state_dict()
    restored = _roundtrip(state)
    assert restored["param_groups"][0]["betas"] == (0.8, 0.9)  # tuples stay tuples
    assert set(restored["state"]) == {0}  # integer keys stay integers

    twin = torch.nn.Parameter(parameter.detach().clone())
    twin_optimizer = torch.optim.AdamW([twin], lr=0.1, betas=(0.8, 0.9))
    twin_optimizer.load_state_dict(restored)
    gradient = torch.randn(3, 2)
    parameter.grad, twin.grad = gradient, gradient.clone()
    optimizer.step()
    twin_optimizer.step()
    assert torch.equal(parameter, twin)


def test_flatten_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(CheckpointError, match="without pickle"):
        checkpoint.flatten({"f": object()}, {}, "x.")


def _state(step: int) -> checkpoint.TrainingState:
    _, optimizer = _adam_after_two_steps()
    return checkpoint.TrainingState(
        step=step,
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": step, "lr_lambdas": [{}]},
        scaler=None,
        rng=checkpoint.rng_state(),
        trainable_parameters=["w"],
        run={"seed": 0},
        log=[{"step": step, "loss": 1.5}],
    )


def _save_weights(folder: Path) -> None:
    save_file({"w": torch.ones(2)}, str(folder / "adapter_model.safetensors"))


def test_a_checkpoint_is_json_and_safetensors_only(tmp_path: Path) -> None:
    folder = checkpoint.save_checkpoint(tmp_path, _state(3), _save_weights)
    assert folder == tmp_path / "checkpoint-3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_model.safetensors", "training_state.json", "training_state.safetensors"
    ]
    assert not list(tmp_path.glob("*.partial"))
    loaded = checkpoint.load_training_state(folder)
    assert loaded.step == 3 and loaded.log == [{"step": 3, "loss": 1.5}] and loaded.run == {"seed": 0}
    assert torch.equal(loaded.rng["torch"], torch.get_rng_state())


def test_rng_state_restores_the_random_stream() -> None:
    state = checkpoint.rng_state()
    expected = torch.rand(4)
    torch.rand(7)
    checkpoint.set_rng_state(_roundtrip(state))
    assert torch.equal(torch.rand(4), expected)


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path: Path) -> None:
    assert checkpoint.latest_checkpoint(tmp_path / "absent") is None
    assert checkpoint.latest_checkpoint(tmp_path) is None
    for step in (2, 10):
        checkpoint.save_checkpoint(tmp_path, _state(step), _save_weights)
    (tmp_path / "checkpoint-12").mkdir()  # killed before its state was written: not complete
    (tmp_path / "checkpoint-14.partial").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_a_crash_while_saving_leaves_no_checkpoint(tmp_path: Path) -> None:
    def crash(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.save_checkpoint(tmp_path, _state(4), crash)
    assert checkpoint.latest_checkpoint(tmp_path) is None


def test_bad_checkpoint_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        checkpoint.load_training_state(tmp_path)
    folder = checkpoint.save_checkpoint(tmp_path, _state(1), _save_weights)
    document = json.loads((folder / checkpoint.STATE_JSON).read_text())
    (folder / checkpoint.STATE_JSON).write_text(json.dumps({**document, "format": 99}))
    with pytest.raises(CheckpointError, match="has format 99"):
        checkpoint.load_training_state(folder)
    (folder / checkpoint.STATE_JSON).write_text("{")
    with pytest.raises(CheckpointError, match="is corrupt"):
        checkpoint.load_training_state(folder)
