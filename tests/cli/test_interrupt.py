"""Ctrl-C (SIGINT) on real ``kcore`` processes on the tiny model, sent once each is at work: one
line on stderr, status 130, no traceback. ``kcore serve``'s part is in tests/server/test_lifecycle.py."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .kcore_process import KCORE, Output, assert_stopped_by_ctrl_c, wait_until

Start = Callable[..., subprocess.Popen]
#: Enough tokens that the tiny model is still generating when Ctrl-C comes (prompt included, within its
#: context of 1024).
LONG = ("--max-tokens", "900")


@pytest.fixture
def kcore() -> Iterator[Start]:
    """Starts ``kcore ARGS...`` with stderr piped (stdin and stdout piped unless given); kills what
    is still running at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str, stdin: int = subprocess.PIPE, stdout: int = subprocess.PIPE) -> subprocess.Popen:
        process = subprocess.Popen([*KCORE, *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _ctrl_c(process: subprocess.Popen, stderr: Output) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    return process.wait(60), stderr.rest()


def test_generate_stops_mid_output(tiny_model: Path, kcore: Start) -> None:
    process = kcore("generate", "--model", str(tiny_model), *LONG, "Tell me a long story")
    stdout, stderr = Output(process.stdout.fileno()), Output(process.stderr.fileno())
    stdout.wait_for(r"(?s).{20}", process)  # streaming
    code, err = _ctrl_c(process, stderr)
    assert_stopped_by_ctrl_c(code, err, "generate")


def test_piped_chat_stops_mid_reply(tiny_model: Path, kcore: Start) -> None:
    process = kcore("chat", "--model", str(tiny_model), *LONG)
    stdout, stderr = Output(process.stdout.fileno()), Output(process.stderr.fileno())
    process.stdin.write(b"Tell me a long story\n")
    process.stdin.flush()
    stdout.wait_for(r"(?s).{20}", process)
    code, err = _ctrl_c(process, stderr)
    assert_stopped_by_ctrl_c(code, err, "chat")


def test_chat_on_a_terminal_drops_an_interrupted_reply_and_quits_at_the_prompt(tiny_model: Path, kcore: Start) -> None:
    terminal, side = pty.openpty()
    process = kcore("chat", "--model", str(tiny_model), *LONG, stdin=side, stdout=side)
    os.close(side)
    screen, stderr = Output(terminal), Output(process.stderr.fileno())
    try:
        screen.wait_for(">>> ", process)
        os.write(terminal, b"Tell me a long story\n")
        screen.wait_for(r"story\r?\n(?s:.{20})", process)  # the echoed line, then the reply streaming
        process.send_signal(signal.SIGINT)
        stderr.wait_for(re.escape("(message dropped; /reset starts over)"), process)
        screen.wait_for("(?s)>>> .*>>> ", process)  # prompted again: the chat goes on
        code, err = _ctrl_c(process, stderr)
    finally:
        os.close(terminal)
    assert_stopped_by_ctrl_c(code, err, "chat")


def _last_checkpoint(output: Path) -> Path | None:
    """The checkpoint ``--resume`` would continue from."""
    found = get_last_checkpoint(str(output)) if output.is_dir() else None
    return Path(found) if found is not None else None


def test_finetune_stops_keeping_its_last_complete_checkpoint(tiny_model: Path, kcore: Start, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Row {i}:", "completion": f" {i}"}) + "\n" for i in range(64)))
    out = tmp_path / "out"
    process = kcore("finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(out),
                    "--batch-size", "2", "--max-steps", "100000", "--save-steps", "1", stdout=subprocess.DEVNULL)
    stderr = Output(process.stderr.fileno())
    # training: a checkpoint is written after each step
    wait_until(lambda: _last_checkpoint(out), process, lambda: f"a checkpoint in {out}:\n{stderr.text}")
    code, err = _ctrl_c(process, stderr)

    last = _last_checkpoint(out)
    note = f"; {last} is kept: the same command with --resume continues from it"
    assert_stopped_by_ctrl_c(code, err, "finetune", note)
    checkpoints = [path for path in out.iterdir() if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", path.name)]
    for folder in checkpoints:  # what --resume could pick is whole: one written in part is still hidden, staged
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == int(folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-"))
        assert load_file(folder / "adapter_model.safetensors")
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8  # LoraConfig's default: no --r given
    assert last in checkpoints
    assert not (out / "adapter_model.safetensors").exists()  # no final adapter from a run cut short
