"""``kcore bench serve`` end to end: a real ``kcore serve`` process on the tiny model, a handful of
W1's prompts as a Poisson load over HTTP. Structure, token counts and arithmetic only, never speed."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path

import pytest

from kernel_core.bench import serve
from kernel_core.bench.workloads import default_path
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError

PROMPTS, TOKENS = 4, 5
needs_workloads = pytest.mark.skipif(
    not default_path().is_file(), reason=f"no shared workload file at {default_path()}"
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "serve", *argv])


def test_arrivals_are_a_seeded_poisson_process() -> None:
    times = serve.arrival_times(2000, 4.0, seed=7)
    assert times == serve.arrival_times(2000, 4.0, seed=7) != serve.arrival_times(2000, 4.0, seed=8)
    assert times[0] == 0 and times == sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 4.0, rel=0.1)  # exponential gaps of mean 1 / rate
    assert serve.arrival_times(3, math.inf, seed=0) == [0.0, 0.0, 0.0]


def test_latencies_of_one_request_from_its_events() -> None:
    result = serve.RequestResult(0)
    result.chunk_times = [0.5, 0.75, 1.25]
    result.ttft, result.e2e, result.output_tokens = 0.5, 1.5, 3
    assert result.itl == [0.25, 0.5]
    assert result.tpot == pytest.approx((1.5 - 0.5) / 2)
    stats = serve.latency_stats("itl", [0.25, 0.5])
    assert stats["itl_mean_s"] == pytest.approx(0.375) and stats["itl_p50_s"] == pytest.approx(0.375)
    assert stats["itl_p99_s"] == pytest.approx(0.4975)
    assert serve.latency_stats("ttft", []) == {"ttft_mean_s": None, "ttft_p50_s": None, "ttft_p90_s": None, "ttft_p99_s": None}


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "fast"])
def test_bad_rates_are_usage_errors(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--rate", rate)
    assert "--rate" in capsys.readouterr().err


def test_block_size_is_not_offered(capsys: pytest.CaptureFixture[str]) -> None:
    """kcore serve has no --block-size, so neither has its benchmark."""
    with pytest.raises(SystemExit):
        _parse("--block-size", "16")
    assert _parse("--rate", "inf").rate == math.inf


def test_missing_workloads_fail_before_starting_a_server(tmp_path: Path) -> None:
    args = _parse("--workloads", str(tmp_path / "workload.py"), "--model", str(tmp_path / "no-model"))
    with pytest.raises(KernelCoreError, match="does not exist"):
        args.func(args)


def test_a_server_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(KernelCoreError, match="kcore serve exited") as error:
        with serve.ServerProcess(tmp_path / "no-model", startup_timeout=120):
            pass
    assert "no-model" in str(error.value)


@needs_workloads
def test_serve_benchmark_on_the_tiny_model(
    tiny_model: Path, embedded_model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server process's torch threads
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
    out = tmp_path / "serve.json"
    args = _parse(
        "--model", str(tiny_model), "--limit", str(PROMPTS), "--max-tokens", str(TOKENS), "--rate", "20",
        "--seed", "3", "--kv-cache-memory", "0.02", "--max-num-seqs", "8", "--json", str(out),
    )
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out

    assert (report["benchmark"], report["workload"], report["full_workload"]) == ("serve", "W1", False)
    assert (report["num_prompts"], report["max_tokens"], report["request_rate"], report["seed"]) == (
        PROMPTS, TOKENS, 20.0, 3)
    assert report["server_args"] == ["--max-num-seqs", "8", "--kv-cache-memory", "0.02"]
    (result,) = report["results"]
    assert (result["requests"], result["output_tokens"]) == (PROMPTS, PROMPTS * TOKENS)  # ignore_eos: all of them
    assert result["prompt_tokens"] > 0 and result["seconds"] > 0
    assert result["output_tok_s"] == pytest.approx(result["output_tokens"] / result["seconds"])
    assert result["requests_per_s"] == pytest.approx(PROMPTS / result["seconds"])
    assert 0 < result["itl_count"] <= PROMPTS * (TOKENS - 1)
    for key in ("ttft", "itl", "tpot", "e2e"):
        values = [result[f"{key}_{stat}_s"] for stat in ("p50", "p90", "p99")]
        assert 0 < values[0] <= values[1] <= values[2], key
        assert result[f"{key}_mean_s"] > 0
    assert result["ttft_p99_s"] <= result["e2e_p99_s"]
    assert report["references"] == [] and report["ratios"] == {}

    assert "Poisson arrivals at 20 requests/s" in printed and "reduced workload" in printed
    for label in ("time to first token", "inter-token latency", "end-to-end latency", "p99"):
        assert label in printed
    assert [json.loads(line) for line in printed.splitlines() if line.startswith("{")] == report["results"]


def test_the_client_reads_a_chunked_event_stream() -> None:
    """The raw HTTP/1.1 client against a canned chunked SSE answer: TTFT, chunks, usage, [DONE]."""
    events = [
        'data: {"choices": [{"index": 0, "text": "Hel"}]}\n\n',
        'data: {"choices": [{"index": 0, "text": "lo"}]}\n\n',
        'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}\n\n',
        "data: [DONE]\n\n",
    ]

    async def main() -> serve.RequestResult:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            length = 0
            while line := (await reader.readline()).strip():
                name, _, value = line.decode().partition(":")
                length = int(value) if name.lower() == "content-length" else length
            request = json.loads(await reader.readexactly(length))
            assert request["stream"] and request["ignore_eos"] and request["stream_options"]["include_usage"]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for text in events:
                data = text.encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, serve.HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await serve._request(port, "m", "hi", 2, 0, timeout=30)

    result = asyncio.run(main())
    assert result.error is None
    assert (result.text, result.prompt_tokens, result.output_tokens, len(result.chunk_times)) == ("Hello", 3, 2, 2)
    assert 0 < result.ttft <= result.chunk_times[-1] <= result.e2e
