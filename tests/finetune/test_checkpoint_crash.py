"""``kcore finetune`` killed with SIGKILL at random times, again and again, each run resuming the
last one with ``--resume`` (runs are real processes, forked by a :class:`~tests.crash.Zygote` so
that each starts in a fraction of a second): every folder that looks complete is (each checkpoint
holds the uninterrupted run's adapter, bit for bit, and its logged losses, gradient norms, learning
rates and eval losses), and the run that finally finishes ends with the uninterrupted run's output.

A checkpoint killed at each of its write points, and a full disk while checkpointing, are tested on
``AdapterTrainer`` itself, in tests/finetune/test_trainer.py."""

from __future__ import annotations

import itertools
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from kernel_core.atomic import is_leftover
from kernel_core.finetune.plot import LOSS_PLOT
from kernel_core.finetune.trainer import TRAINING_ARGS_JSON
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME

from ..crash import Child, Zygote
from .conftest import CAPITALS
from .trajectory import assert_same_adapter, trajectory

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the children run on one thread too: same sums

STEPS, SAVE_STEPS = 12, 2
SETTINGS = [
    "--max-steps", str(STEPS), "--save-steps", str(SAVE_STEPS), "--batch-size", "2", "--r", "4", "--alpha", "8",
    "--dropout", "0.1", "--lr", "1e-2", "--warmup-steps", "1", "--seed", "7", "--no-progress",
]
STARTED = "trainable parameters"  # the line run_finetune prints once the model is loaded, before training
KILLS = 8
PRELOAD = (
    "torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.trainer", "datasets",
    "kernel_core.cli", "kernel_core.finetune.run", "kernel_core.finetune.trainer", "kernel_core.finetune.data",
)
#: What the finished run writes beside its checkpoints; the adapter's config comes last.
FINAL_FILES = {"trainer_state.json", LOSS_PLOT, WEIGHTS_NAME, TRAINING_ARGS_JSON, CONFIG_NAME}


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
    """The output folder of a run nobody killed, and how long it took from the model loaded to the
    end (to spread kills over: loading writes nothing, and takes most of a run this small)."""
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    run = _finetune(zygote, argv, output)
    run.wait_for(STARTED)
    started = time.perf_counter()
    assert run.wait() == 0, run.output()
    return output, time.perf_counter() - started


def _arguments(folder: Path) -> dict[str, object]:
    """The training arguments written in ``folder``, but the output folder they name."""
    return {key: value for key, value in json.loads((folder / TRAINING_ARGS_JSON).read_text()).items() if key != "output_dir"}


def _last_checkpoint(output: Path) -> Path | None:
    found = get_last_checkpoint(str(output)) if output.is_dir() else None
    return Path(found) if found is not None else None


def _check_nothing_half_written(output: Path, reference: Path) -> None:
    """Whatever looks finished in ``output`` is exactly what the uninterrupted run wrote there."""
    for path in output.iterdir() if output.exists() else ():
        if is_leftover(path):
            continue
        if path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            assert trajectory(path) == trajectory(reference / path.name), path
            assert_same_adapter(path, reference / path.name)
            assert _arguments(path) == _arguments(reference / path.name)
        else:
            assert path.name in FINAL_FILES, f"unexpected {path}"
    if (output / CONFIG_NAME).exists():  # the final output is all there
        assert trajectory(output) == trajectory(reference)
        assert_same_adapter(output, reference)
        assert (output / LOSS_PLOT).read_bytes() == (reference / LOSS_PLOT).read_bytes()


@pytest.mark.parametrize("kills", [KILLS, pytest.param(4 * KILLS, marks=pytest.mark.slow)])
def test_killed_at_random_times_then_resumed_it_ends_as_if_never_killed(
    zygote: Zygote, argv: list[str], uninterrupted: tuple[Path, float], tmp_path: Path, kills: int
) -> None:
    reference, duration = uninterrupted
    output = tmp_path / "out"
    rng = random.Random(kills)
    landed = 0
    for attempt in itertools.count():
        latest = _last_checkpoint(output)
        run = _finetune(zygote, argv, output)
        if attempt == kills:
            assert run.wait() == 0, run.output()
            assert latest is None or f"resuming from {latest}" in run.output()
            break
        # Once its model is loaded, run k is killed within the k-th of `kills` slices of what it has
        # left to do: early to late.
        left = duration * (STEPS - (int(latest.name.split("-")[1]) if latest else 0)) / STEPS
        run.wait_for(STARTED)
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
    assert _arguments(output) == _arguments(reference)
