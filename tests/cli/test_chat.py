"""``kcore chat`` on a tiny model: the history goes with every message, /reset and /exit, piped
stdin answered line by line, errors fatal when piped and survivable on a terminal."""

from __future__ import annotations

import argparse
import io
import types
from pathlib import Path
from typing import Any

import pytest

from kernel_core.cli import chat
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError

SYSTEM = {"role": "system", "content": "Be brief."}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    chat.register(parser.add_subparsers())
    return parser.parse_args(["chat", *argv])


@pytest.fixture
def tiny_args(tiny_model: Path) -> tuple[str, ...]:
    """Seeded sampling: greedy, the random tiny model answers only whitespace; this gives words."""
    return (
        "--model", str(tiny_model), "--kv-cache-memory", "0.01",
        "--max-tokens", "5", "--temperature", "1", "--seed", "0",
    )


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Every prompt the engine was given, and every reply chat printed."""
    seen = types.SimpleNamespace(prompts=[], replies=[])
    add_request, stream_text = LLMEngine.add_request, chat.stream_text

    def recording_add(self: LLMEngine, request_id: str, prompt: Any, *args: Any, **kwargs: Any) -> None:
        seen.prompts.append(prompt)
        add_request(self, request_id, prompt, *args, **kwargs)

    def recording_stream(*args: Any) -> str:
        seen.replies.append(stream_text(*args))
        return seen.replies[-1]

    monkeypatch.setattr(LLMEngine, "add_request", recording_add)
    monkeypatch.setattr(chat, "stream_text", recording_stream)
    return seen


def template(tiny_model: Path, *messages: dict[str, str]) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_help_and_defaults() -> None:
    args = _parse()
    assert args.func is chat.run and args.system is None and args.max_tokens == 512 and args.temperature == 0.0
    assert _parse("--system", "Be brief.").system == "Be brief."


def test_piped_lines_are_answered_with_the_history(tiny_model, tiny_args, seen, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n\nWhat did I say?\n"))
    assert chat.run(_parse(*tiny_args, "--system", SYSTEM["content"])) == 0
    first, second = seen.replies
    assert first.strip()
    assert capsys.readouterr().out == f"{first}\n{second}\n"
    assert seen.prompts == [
        template(tiny_model, SYSTEM, user("Hello there")),
        template(tiny_model, SYSTEM, user("Hello there"), assistant(first), user("What did I say?")),
    ]


def test_reset_forgets_and_exit_stops(tiny_model, tiny_args, seen, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("one\n/reset\ntwo\n/exit\nthree\n"))
    assert chat.run(_parse(*tiny_args)) == 0
    assert seen.prompts == [template(tiny_model, user("one")), template(tiny_model, user("two"))]
    assert capsys.readouterr().out == "".join(reply + "\n" for reply in seen.replies)


def test_a_refused_message_ends_a_piped_chat(tiny_args, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("word " * 40 + "\nnever asked\n"))
    with pytest.raises(InvalidRequestError, match="but max_model_len is 32"):
        chat.run(_parse(*tiny_args, "--max-model-len", "32"))


def test_on_a_terminal_a_refused_message_is_dropped_and_the_chat_goes_on(
    tiny_model, tiny_args, seen, monkeypatch, capsys
):
    typed = iter(["word " * 40, "hi"])

    def fake_input(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", fake_input)
    assert chat.run(_parse(*tiny_args, "--max-model-len", "64")) == 0
    assert seen.prompts[-1] == template(tiny_model, user("hi"))  # the refused message left no trace
    captured = capsys.readouterr()
    assert captured.out == seen.replies[0] + "\n"
    assert "kcore: error: request 'kcore-cli': the prompt has" in captured.err
    assert "(message dropped; /reset starts over)" in captured.err
