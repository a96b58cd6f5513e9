"""``kcore generate``: parser options, one-line errors, and the real model's answer."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from kernel_core.cli import generate, main
from kernel_core.models import EMBEDDED_MODEL_ID

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


@pytest.fixture
def embedded_cache(embedded_model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
    return embedded_model_cache


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    generate.register(parser.add_subparsers())
    return parser.parse_args(["generate", *argv])


def test_defaults() -> None:
    args = _parse("hello")
    assert args.func is generate.run
    assert (args.prompt, args.model, args.chat, args.max_tokens, args.temperature, args.seed) == (
        "hello", EMBEDDED_MODEL_ID, True, 64, 0.0, None)
    assert _parse("--no-chat", "hello").chat is False


@pytest.mark.parametrize("option", [["--max-tokens", "0"], ["--max-tokens", "x"], ["--temperature", "-1"]])
def test_bad_numbers_are_usage_errors(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(*option, "hello")
    assert exit_.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_unknown_model_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", "no-such-model", "hello"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kcore: error: ") and captured.err.count("\n") == 1
    assert "'no-such-model'" in captured.err and "Traceback" not in captured.err


def test_empty_stdin_is_an_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["generate", "-"]) == 2
    assert capsys.readouterr().err == "kcore: error: the prompt is empty\n"


def test_greedy_answer(embedded_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.run(_parse(QUESTION)) == 0
    assert capsys.readouterr().out == ANSWER + "\n"


def test_prompt_from_stdin(
    embedded_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    assert generate.run(_parse("-")) == 0
    assert capsys.readouterr().out == ANSWER + "\n"


def test_no_chat_continues_raw_text(embedded_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.run(_parse("--no-chat", "--max-tokens", "2", "The capital of France is")) == 0
    assert capsys.readouterr().out == " Paris.\n"


def test_sampling_is_reproducible_with_a_seed(embedded_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--temperature", "0.9", "--seed", "7", "--max-tokens", "8", QUESTION)
    assert generate.run(_parse(*argv)) == 0
    first = capsys.readouterr().out
    assert generate.run(_parse(*argv)) == 0
    assert capsys.readouterr().out == first and first.strip()
