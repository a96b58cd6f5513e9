"""``kcore finetune`` killed with SIGKILL at random times, again and again, each run resuming the
last one with ``--resume`` (runs are real processes, forked by a :class:`~tests.crash.Zygote` so
that each starts in a fraction of a second): every folder that looks complete is (each checkpoint
equals the uninterrupted run's), and the run that finally finishes ends with the uninterrupted
run's adapter, checkpoints and log, bit for bit. A checkpoint killed at each write point is whole
or absent; a full disk while checkpointing is a clear error, and ``--resume`` continues from the
previous checkpoint."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.atomic import is_leftover
from kernel_core.cli import main
from kernel_core.finetune import checkpoint
from kernel_core.finetune.run import TRAIN_LOG
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME, read_adapter

from ..crash import Child, Zygote, killed_before_write
from .conftest import CAPITALS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the children run on one thread too: same sums

STEPS, SAVE_STEPS = 12, 2
SETTINGS = [
    "--max-steps", str(STEPS), "--save-steps", str(SAVE_STEPS), "--batch-size", "2", "--r", "4", "--alpha", "8",
    "--dropout", "0.1", "--lr", "1e-2", "--warmup-steps", "1", "--seed", "7", "--no-progress",
]
STARTED = "trainable parameters"  # the line run_finetune prints once the model is loaded, before training
KILLS = 8
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama", "kernel_core.cli", "kernel_core.finetune.run")


@pytest.fixture(scope="module")
def argv(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``kcore finetune`` without ``--output``; always ``--resume``, as one would rerun it after a crash."""
    data = tmp_path_factory.mktemp("data")
    rows = [{"prompt": f"Capital of {country}:", "completion": f" {city}"} for country, city in CAPITALS]
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (data / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))
    return ["finetune", "--model", str(tiny_model), "--data", str(data / "train.jsonl"),
            "--eval-data", str(data / "eval.jsonl"), *SETTINGS, "--resume"]


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    zygote = Zygote(*PRELOAD)
    yield zygote
    zygote.close()


def _finetune(zygote: Zygote, argv: list[str], output: Path) -> Child:
    code = f"import sys; from kernel_core.cli import main; sys.exit(main({[*argv, '--output', str(output)]!r}))"
    return zygote.start(code, output.with_name(output.name + ".log"))


@pytest.fixture(scope="module")
def uninterrupted(zygote: Zygote, argv: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The output folder of a run nobody killed, and how long it took (to spread kills over)."""
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    started = time.perf_counter()
    run = _finetune(zygote, argv, output)
    assert run.wait() == 0, run.output()
    return output, time.perf_counter() - started


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return read_adapter(folder)[1]


def _same_adapter(folder: Path, reference: Path) -> None:
    expected, found = _tensors(reference), _tensors(folder)
    assert found.keys() == expected.keys(), folder
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), f"{folder}: {name} differs from the uninterrupted run"


def _check_nothing_half_written(output: Path, reference: Path) -> None:
    """Whatever looks finished in ``output`` is exactly what the uninterrupted run wrote there."""
    for path in output.iterdir() if output.exists() else ():
        if is_leftover(path):
            continue
        if path.name.startswith(checkpoint.CHECKPOINT_PREFIX):
            state = checkpoint.load_training_state(path)
            assert state.log == checkpoint.load_training_state(reference / path.name).log
            _same_adapter(path, reference / path.name)
        elif path.name == TRAIN_LOG:
            assert json.loads(path.read_text()) == json.loads((reference / TRAIN_LOG).read_text())
        else:
            assert path.name in (CONFIG_NAME, WEIGHTS_NAME), f"unexpected {path}"
    if (output / CONFIG_NAME).exists():
        _same_adapter(output, reference)


@pytest.mark.parametrize("kills", [KILLS, pytest.param(4 * KILLS, marks=pytest.mark.slow)])
def test_killed_at_random_times_then_resumed_it_ends_as_if_never_killed(
    zygote: Zygote, argv: list[str], uninterrupted: tuple[Path, float], tmp_path: Path, kills: int
) -> None:
    reference, duration = uninterrupted
    output = tmp_path / "out"
    rng = random.Random(kills)
    landed = 0
    for attempt in itertools.count():
        latest = checkpoint.latest_checkpoint(output)
        run = _finetune(zygote, argv, output)
        if attempt == kills:
            assert run.wait() == 0, run.output()
            assert latest is None or f"resuming from {latest}" in run.output()
            break
        # Run k is killed within the k-th of `kills` slices of what it has left to do: early to late.
        left = duration * (STEPS - (int(latest.name.split("-")[1]) if latest else 0)) / STEPS
        time.sleep(left * (attempt + rng.random()) / kills)
        run.kill()
        status = run.wait()
        assert status in (0, -signal.SIGKILL), run.output()
        landed += status == -signal.SIGKILL
        if latest is not None and STARTED in run.output():
            assert f"resuming from {latest}" in run.output()
        _check_nothing_half_written(output, reference)
    print(f"{landed} of {kills} kills landed in runs of {duration:.2f} s")
    assert landed >= kills // 2, f"most runs finished before their kill ({duration:.2f} s each)"
    _check_nothing_half_written(output, reference)
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in reference.iterdir())


def _save(output: Path, model: Any, step: int) -> None:
    state = checkpoint.TrainingState(
        step=step, optimizer={"state": {}, "param_groups": []}, scheduler={"last_epoch": step}, scaler=None,
        rng=checkpoint.rng_state(), trainable_parameters=["w"], run={"seed": 7}, log=[{"step": step}],
    )
    checkpoint.save_checkpoint(output, state, model.save_pretrained)


def test_killed_at_any_write_point_a_checkpoint_is_whole_or_absent(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from kernel_core.peft import get_config, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), get_config("lora", r=2, target_modules=["q_proj"]))
    _save(tmp_path, model, 2)
    seen = set()
    for n in itertools.count(1):
        killed = killed_before_write(lambda: _save(tmp_path, model, 4), n)
        latest = checkpoint.latest_checkpoint(tmp_path)
        seen.add(latest.name)
        assert checkpoint.load_training_state(latest).log == [{"step": int(latest.name.split("-")[1])}]
        read_adapter(latest)
        assert [p.name for p in tmp_path.iterdir() if not is_leftover(p)] in (["checkpoint-2"], ["checkpoint-2", "checkpoint-4"])
        _save(tmp_path, model, 4)  # the resumed run saves step 4 again
        assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
        if not killed:
            break
        shutil.rmtree(tmp_path / "checkpoint-4")  # back to before the kill, for the next write point
    assert seen == {"checkpoint-2", "checkpoint-4"}


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_resume_continues(
    argv: list[str], uninterrupted: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference, _ = uninterrupted
    real_save_file = checkpoint.save_file

    def full_at_step_4(tensors: dict[str, torch.Tensor], filename: str, **kwargs: Any) -> None:
        if "checkpoint-4" not in filename:
            return real_save_file(tensors, filename, **kwargs)
        with open(filename, "wb") as half:
            half.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setenv("KERNEL_CORE_PLATFORM", "cpu")  # where the uninterrupted run trained
    monkeypatch.setattr(checkpoint, "save_file", full_at_step_4)
    descriptors = len(os.listdir("/proc/self/fd"))
    assert main([*argv, "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"kcore: error: no space left on the device while writing {tmp_path / 'checkpoint-4'};")
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    _check_nothing_half_written(tmp_path, reference)

    monkeypatch.setattr(checkpoint, "save_file", real_save_file)  # space freed
    assert main([*argv, "--output", str(tmp_path)]) == 0
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in capsys.readouterr().out
    _check_nothing_half_written(tmp_path, reference)
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(reference))
