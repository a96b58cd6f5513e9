"""``kcore finetune --nproc 2``: DDP over gloo on two CPU processes trains what one process does with
the same global batch (the loss curve step by step, and the adapter's logits, within reduction-order
noise), and a rank that dies fails the run with a clear error, leaving nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import CAPITALS

STEPS = 4
COMMON = ["--r", "4", "--alpha", "8", "--dropout", "0", "--lr", "1e-2", "--seed", "5", "--no-progress"]


def _kcore(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KERNEL_CORE_PLATFORM": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "kernel_core", *argv], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _train(tiny_model: Path, data: Path, output: Path, *extra: str) -> list[float]:
    run = _kcore("finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--max-steps", str(STEPS), *COMMON, *extra)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, out + err
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [record["loss"] for record in history if "loss" in record]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"prompt": f"Capital of {country}:", "completion": f" {city}"} for country, city in CAPITALS] * 3
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _logits(tiny_model: Path, adapter: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from kernel_core.peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_two_processes_train_what_one_does_with_the_same_global_batch(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    one = _train(tiny_model, data, tmp_path / "one", "--batch-size", "4")
    # The same global batch summed in another order, in one process: the reduction-order noise floor.
    accumulated = _train(tiny_model, data, tmp_path / "accumulated", "--batch-size", "2", "--grad-accum", "2")
    two = _train(tiny_model, data, tmp_path / "two", "--batch-size", "2", "--nproc", "2")
    print("step  1 process        2 processes      |diff|    1 process, 2 x 2 accumulated  |diff|")
    for step, (a, b, c) in enumerate(zip(one, two, accumulated, strict=True), start=1):
        print(f"{step:4}  {a:.9f}  {b:.9f}  {abs(a - b):.1e}  {c:.9f}  {abs(a - c):.1e}")
    floor = max(max(abs(a - c) for a, c in zip(one, accumulated)), 8 * torch.finfo(torch.float32).eps * max(one))
    assert len(two) == STEPS and max(abs(a - b) for a, b in zip(one, two)) <= 4 * floor

    reference = _logits(tiny_model, tmp_path / "one")
    floor = max((_logits(tiny_model, tmp_path / "accumulated") - reference).abs().max().item(), 8 * torch.finfo(torch.float32).eps * reference.abs().max().item())
    assert (_logits(tiny_model, tmp_path / "two") - reference).abs().max().item() <= 4 * floor
    assert json.loads((tmp_path / "two" / "training_args.json").read_text())["world_size"] == 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def test_a_dead_rank_fails_the_run_clearly_and_nothing_is_left_running(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    run = _kcore("finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--max-steps", "100000",
                 "--batch-size", "2", "--nproc", "2", "--save-steps", "1", *COMMON)
    deadline = time.monotonic() + 120
    while not (output / "checkpoint-1").is_dir():  # both ranks are in the training loop
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    ranks = _children(run.pid)
    assert len(ranks) == 2, ranks
    victim = max(ranks)  # the second rank started
    os.kill(victim, signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("kcore: error: rank ") and f"(pid {victim}) was killed by SIGKILL" in last, last
    assert "nothing is left running" in last and "--resume continues from it" in last, last
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3] for pid in ranks)


@pytest.mark.slow
def test_fsdp_from_the_documented_file_trains_what_ddp_does(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    fsdp_file = Path(__file__).parents[2] / "examples" / "distributed" / "fsdp.json"
    ddp = _train(tiny_model, data, tmp_path / "ddp", "--batch-size", "2", "--nproc", "2")
    fsdp = _train(tiny_model, data, tmp_path / "fsdp", "--batch-size", "2", "--nproc", "2", "--training-args", str(fsdp_file))
    assert json.loads((tmp_path / "fsdp" / "training_args.json").read_text())["fsdp"]
    assert fsdp == ddp
    reference = _logits(tiny_model, tmp_path / "ddp")
    assert torch.equal(_logits(tiny_model, tmp_path / "fsdp"), reference)


@pytest.mark.slow
def test_streamed_data_on_two_processes_trains_what_one_does(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    one = _train(tiny_model, data, tmp_path / "one", "--batch-size", "4", "--streaming")
    two = _train(tiny_model, data, tmp_path / "two", "--batch-size", "2", "--nproc", "2", "--streaming")
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= 8 * torch.finfo(torch.float32).eps * max(one)
