"""``kcore serve --tensor-parallel-size 2``: the OpenAI endpoint answers as the unsharded server
does, and stopping the server stops its rank process too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import API_KEY, start_server

GREEDY = dict(temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
PROMPT = "The capital of France is"


def _completion_and_ranks(model: Path, log: Path, *args: str) -> tuple[str, list[int], int]:
    """One greedy completion, the pids of the server's child processes, and its exit status."""
    server = start_server(model, log, "--api-key", API_KEY, "--num-kv-blocks", "64", *args)
    try:
        text = server.client().completions.create(model=server.model, prompt=PROMPT, **GREEDY).choices[0].text
        children = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f", "spawn_main"],
                                  capture_output=True, text=True)  # the ranks, not multiprocessing's resource tracker
        ranks = [int(pid) for pid in children.stdout.split()]
    finally:
        status = server.stop()
    return text, ranks, status


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sharded_server_answers_as_one_process_and_stops_its_ranks(tiny_model: Path, tmp_path: Path) -> None:
    expected, _, status = _completion_and_ranks(tiny_model, tmp_path / "one.log")
    assert status == 0
    text, ranks, status = _completion_and_ranks(tiny_model, tmp_path / "two.log", "--tensor-parallel-size", "2")
    assert status == 0, (tmp_path / "two.log").read_text()
    assert text == expected
    assert ranks, "the rank process of a size-2 server is its child"
    assert not [pid for pid in ranks if _running(pid)], "a rank outlived the server"
