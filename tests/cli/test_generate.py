"""``kcore generate``: parser options, one-line errors, streaming, and the real model's answer."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from kernel_core.cli import generate, main
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError
from kernel_core.models import EMBEDDED_MODEL_ID
from kernel_core.sampling_params import SamplingParams

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
SMALL = ("--kv-cache-memory", "0.1", "--max-model-len", "2048")  # a small KV cache is quick to allocate


class RecordingStdout(io.StringIO):
    """stdout that remembers how the text arrived: a flush after each piece means it streamed."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def flush(self) -> None:
        self.pieces.append(self.getvalue()[sum(map(len, self.pieces)) :])


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    generate.register(parser.add_subparsers())
    return parser.parse_args(["generate", *argv])


@pytest.fixture(scope="module")
def embedded_engine(embedded_model_cache: Path) -> LLMEngine:
    """The real model's engine, built once: tests past the first end-to-end one reuse it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
        return generate.build_engine(_parse(*SMALL, "unused"))


@pytest.fixture
def reused_engine(embedded_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> LLMEngine:
    monkeypatch.setattr(generate, "build_engine", lambda args: embedded_engine)
    return embedded_engine


def test_defaults() -> None:
    args = _parse("hello")
    assert args.func is generate.run
    assert (args.prompt, args.model, args.chat, args.max_tokens, args.temperature, args.seed) == (
        "hello", EMBEDDED_MODEL_ID, True, 64, 0.0, None)
    assert (args.max_model_len, args.kv_cache_memory, args.top_p, args.top_k, args.stop) == (None, None, 1.0, 0, [])
    assert (args.moe_kernel, args.moe_quantization) == (None, None)
    assert _parse("--no-chat", "hello").chat is False
    assert generate.sampling_params(args) == SamplingParams(temperature=0.0, max_tokens=64)


def test_sampling_options_map_onto_sampling_params() -> None:
    args = _parse(
        "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--seed", "3", "--max-tokens", "9",
        "--stop", "\n", "--stop", "END", "hello",
    )
    assert generate.sampling_params(args) == SamplingParams(
        temperature=0.7, top_p=0.9, top_k=5, seed=3, max_tokens=9, stop=("\n", "END")
    )


@pytest.mark.parametrize(
    "option",
    [
        ["--max-tokens", "0"], ["--max-tokens", "x"], ["--temperature", "-1"], ["--temperature", "nan"],
        ["--top-p", "0"], ["--top-p", "1.5"], ["--top-k", "-1"], ["--max-model-len", "0"],
        ["--kv-cache-memory", "0"], ["--stop", ""], ["--moe-quantization", "int4"],
    ],
)
def test_bad_options_are_usage_errors_naming_the_option(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(*option, "hello")
    assert exit_.value.code == 2
    assert f"argument {option[0]}:" in capsys.readouterr().err


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


def test_a_prompt_the_engine_refuses_is_one_error_line(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--model", str(tiny_model), "--kv-cache-memory", "0.01", "--max-model-len", "16"]
    assert main([*argv, "word " * 40]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kcore: error: request 'kcore-cli': the prompt has ")
    assert captured.err.endswith("but max_model_len is 16 (prompt plus at least one output token must fit)\n")


def test_moe_settings_reach_the_engine(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny model is dense: the engine refuses MoE settings in one line naming them."""
    argv = ["generate", "--model", str(tiny_model), *SMALL, "--moe-kernel", "torch", "--moe-quantization", "int8"]
    assert main([*argv, "hello"]) == 2
    assert capsys.readouterr().err.startswith(
        "kcore: error: moe_kernel 'torch', moe_quantization 'int8': the "
    )


def test_text_is_streamed_as_it_is_generated(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    args = _parse("--model", str(tiny_model), "--kv-cache-memory", "0.01", "--no-chat", "--max-tokens", "8", "Hello")
    assert generate.run(args) == 0
    text = stdout.getvalue()
    assert text.endswith("\n") and text.strip()
    assert len([piece for piece in stdout.pieces if piece]) > 1  # several pieces, each flushed
    assert "".join(stdout.pieces) + "\n" == text


def test_stop_strings_end_the_output(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--model", str(tiny_model), "--kv-cache-memory", "0.01", "--no-chat", "--max-tokens", "12")
    assert generate.run(_parse(*argv, "Hello, my name is")) == 0
    full = capsys.readouterr().out.removesuffix("\n")
    stop = full[4:7]
    assert generate.run(_parse(*argv, "--stop", "never", "--stop", stop, "Hello, my name is")) == 0
    assert capsys.readouterr().out == full[: full.index(stop)] + "\n"


def test_an_interrupted_request_leaves_the_engine_empty(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = generate.build_engine(_parse("--model", str(tiny_model), "--kv-cache-memory", "0.01", "x"))
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)

    class Interrupting(io.StringIO):
        def flush(self) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate.stream_text(engine, "Hello", params, Interrupting())
    stats = engine.components.cache.stats()
    assert not engine.has_unfinished_requests() and stats.num_free_blocks == stats.num_blocks
    with pytest.raises(InvalidRequestError, match="the prompt is empty"):
        generate.stream_text(engine, "", params, io.StringIO())
    assert generate.stream_text(engine, "Hello", params, io.StringIO())  # the id is free again


def test_greedy_answer(
    embedded_model_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
    assert main(["generate", *SMALL, QUESTION]) == 0
    assert capsys.readouterr().out == ANSWER + "\n"


def test_prompt_from_stdin(
    reused_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    assert generate.run(_parse("-")) == 0
    assert capsys.readouterr().out == ANSWER + "\n"


def test_no_chat_continues_raw_text(reused_engine: LLMEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.run(_parse("--no-chat", "--max-tokens", "2", "The capital of France is")) == 0
    assert capsys.readouterr().out == " Paris.\n"


def test_sampling_is_reproducible_with_a_seed(reused_engine: LLMEngine, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--temperature", "0.9", "--top-p", "0.95", "--seed", "7", "--max-tokens", "8", QUESTION)
    assert generate.run(_parse(*argv)) == 0
    first = capsys.readouterr().out
    assert generate.run(_parse(*argv)) == 0
    assert capsys.readouterr().out == first and first.strip()


def test_plugin_options_parse_as_json_else_text_and_reach_the_engine_config() -> None:
    from kernel_core.cli.arguments import plugin_options

    args = _parse(
        "--plugin-option", "attention-backend.torch.bucket_bytes=65536",
        "--plugin-option", "lora-kernel.triton.tag=fast",
        "--plugin-option", "lora-kernel.triton.sizes=[16, 32]",
        "hello",
    )
    assert plugin_options(args) == {
        "attention-backend.torch": {"bucket_bytes": 65536},
        "lora-kernel.triton": {"tag": "fast", "sizes": [16, 32]},
    }


@pytest.mark.parametrize("option", ["attention-backend.torch=1", "attention-backend.torch.bucket_bytes", "a..b=1"])
def test_a_malformed_plugin_option_is_a_usage_error(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--plugin-option", option, "hello")
    assert "--plugin-option: expected KIND.NAME.KEY=VALUE" in capsys.readouterr().err


def test_a_bad_plugin_option_is_one_error_line_naming_it(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--model", str(tiny_model), *SMALL, "--plugin-option", "attention-backend.torch.bucket_bytes=0"]
    assert main([*argv, "hello"]) == 2
    assert capsys.readouterr().err.startswith(
        "kcore: error: --plugin-option attention-backend.torch.bucket_bytes=0: Input should be greater than or equal to 1"
    )
