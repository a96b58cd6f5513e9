"""``kcore bench serve``: W1's prompts sent to a real ``kcore serve`` process over HTTP, arriving as a
Poisson process, each a streaming ``/v1/completions`` request; throughput and per-request latencies.

The server runs in a subprocess on 127.0.0.1 (a free port), as a user would run it, so the numbers
include HTTP, JSON and server-sent events, not just the engine. The client is
:mod:`kernel_core.bench.http_client` (asyncio over raw HTTP/1.1, stdlib only).

Per request, timed on the client from just before the request is sent:

- time to first token (TTFT): until the first chunk that carries a completion token;
- inter-token latency (ITL): every gap between two successive such chunks (the server sends one
  chunk per engine step with news, so a gap is one decode step as the client sees it);
- time per output token (TPOT): (end-to-end - TTFT) / (output tokens - 1);
- end-to-end latency (E2E): until ``data: [DONE]``.

Throughput is over the run's wall time, from the first request sent to the last one done.
Requests are greedy with ``ignore_eos``, as in the other benchmarks: every one yields exactly
``max_tokens`` tokens, counted from the stream's ``usage``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_core.bench import ENGINE_NAME, http_client
from kernel_core.bench.http_client import HOST
from kernel_core.bench.prefix import _percentile
from kernel_core.bench.report import Measurement, Report, _table
from kernel_core.bench.workloads import Workload
from kernel_core.errors import KernelCoreError

#: What uvicorn logs once the socket listens; the port is the one bound (``--port 0``).
READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
PERCENTILES = (0.5, 0.9, 0.99)
#: The latency series of the report: key prefix, label.
SERIES = (("ttft", "time to first token"), ("itl", "inter-token latency"), ("tpot", "time per output token"),
          ("e2e", "end-to-end latency"))


@dataclass(frozen=True)
class ServeRun:
    """What ``kcore bench serve`` runs besides the workload."""

    #: Mean arrivals per second of the Poisson process; ``inf`` sends every request at once.
    rate: float
    seed: int = 0
    #: ``kcore serve`` engine options, as command-line arguments.
    server_args: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    #: Seconds one request may take before the run fails.
    request_timeout: float = 3600.0


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from when it was sent."""

    index: int
    sent: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    #: When each chunk carrying completion tokens arrived.
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    text: str = ""
    error: str | None = None

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Offsets in seconds of ``n`` Poisson arrivals at ``rate`` per second (exponential gaps drawn
    from ``random.Random(seed)``), the first at 0; all 0 for an infinite rate."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    times, now = [], 0.0
    for i in range(n):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def benchmark(model: Path, workload: Workload, run: ServeRun) -> Report:
    """Start ``kcore serve`` on ``model``, warm it up, send the workload, stop the server; the report."""
    with ServerProcess(model, run.server_args, run.startup_timeout) as server:
        print(f"kcore serve is up on port {server.port}; warming up", file=sys.stderr, flush=True)
        warm = asyncio.run(_request(server.port, str(model), "warm up", 4, 0, timeout=run.request_timeout))
        if warm.error:
            raise KernelCoreError(f"the warm-up request failed: {warm.error}")
        results, seconds = asyncio.run(_drive(server.port, str(model), workload, run))
    failed = [r for r in results if r.error is not None]
    if failed:
        raise KernelCoreError(f"{len(failed)} of {len(results)} requests failed, first: {failed[0].error}")
    return Report("serve", _settings(model, workload, run), workload.full, [_measurement(workload, run, results,
                                                                                          seconds)], [], {})


def render_report(report: Report) -> str:
    """The measurement table, the latency percentiles, the JSON line."""
    m = report.measurements[0]
    e = m.extra
    parts = [
        f"serve benchmark, {report.settings['workload']} over HTTP (kcore serve, streaming /v1/completions), "
        f"Poisson arrivals at {_rate(float(report.settings['request_rate']))}: measured in this run",
        _table(
            ["engine", "requests", "prompt tok", "output tok", "seconds", "output tok/s", "total tok/s", "requests/s"],
            [[m.engine, m.requests, m.prompt_tokens, m.output_tokens, m.seconds, m.output_tok_s, m.total_tok_s,
              e["requests_per_s"]]],
        ),
        f"Latency in milliseconds ({m.requests} requests, {e['itl_count']} inter-token gaps)",
        _table(
            ["", "mean", "p50", "p90", "p99"],
            [[label, *(_ms(e[f"{key}_{stat}_s"]) for stat in ("mean", "p50", "p90", "p99"))] for key, label in SERIES],
        ),
    ]
    if not report.full_workload:
        parts.append("note: reduced workload (fewer prompts or tokens than W1)")
    parts.append(json.dumps(m.to_dict()))
    return "\n\n".join(parts) + "\n"


def _rate(rate: float) -> str:
    return "an infinite rate (all at once)" if math.isinf(rate) else f"{rate:g} requests/s"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _settings(model: Path, workload: Workload, run: ServeRun) -> dict[str, Any]:
    return {
        "workload": workload.name,
        "workload_file": str(workload.source),
        "model": str(model),
        "num_prompts": len(workload.prompts),
        "max_tokens": workload.max_tokens,
        "request_rate": run.rate if not math.isinf(run.rate) else "inf",
        "seed": run.seed,
        "server_args": list(run.server_args),
        "endpoint": "/v1/completions, stream: true, temperature 0, ignore_eos",
    }


def _measurement(workload: Workload, run: ServeRun, results: list[RequestResult], seconds: float) -> Measurement:
    extra: dict[str, Any] = {
        "request_rate": run.rate if not math.isinf(run.rate) else "inf",
        "requests_per_s": len(results) / seconds,
    }
    series = {
        "ttft": [r.ttft for r in results if r.ttft is not None],
        "itl": [gap for r in results for gap in r.itl],
        "tpot": [t for r in results if (t := r.tpot) is not None],
        "e2e": [r.e2e for r in results if r.e2e is not None],
    }
    for key, values in series.items():
        extra.update(latency_stats(key, values))
    extra["itl_count"] = len(series["itl"])
    return Measurement(
        engine=f"{ENGINE_NAME} serve",
        workload=workload.name,
        requests=len(results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        output_tokens=sum(r.output_tokens for r in results),
        seconds=seconds,
        extra=extra,
    )


def latency_stats(key: str, values: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p90 and p99 of one latency series (``<key>_p50_s``, ...); None for an empty one."""
    ordered = sorted(values)
    stats: dict[str, float | None] = {f"{key}_mean_s": sum(ordered) / len(ordered) if ordered else None}
    for q in PERCENTILES:
        stats[f"{key}_p{round(q * 100)}_s"] = _percentile(ordered, q) if ordered else None
    return stats


# -- the load ----------------------------------------------------------------------------------


async def _drive(port: int, model: str, workload: Workload, run: ServeRun) -> tuple[list[RequestResult], float]:
    """Every prompt at its arrival time; the results in prompt order and the run's wall seconds."""
    from tqdm import tqdm

    offsets = arrival_times(len(workload.prompts), run.rate, run.seed)
    progress = tqdm(total=len(offsets), desc="kcore bench serve", unit="req", file=sys.stderr)
    start = time.perf_counter()

    async def one(index: int, prompt: str, offset: float) -> RequestResult:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        result = await _request(port, model, prompt, workload.max_tokens, index, timeout=run.request_timeout)
        progress.update()
        return result

    try:
        results = await asyncio.gather(*(one(i, p, t) for i, (p, t) in enumerate(zip(workload.prompts, offsets))))
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    return list(results), seconds


async def _request(port: int, model: str, prompt: str, max_tokens: int, index: int, *, timeout: float) -> RequestResult:
    """One streaming completion; failures end up in ``error``, not raised."""
    result = RequestResult(index)
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    result.sent = time.perf_counter()
    try:
        await asyncio.wait_for(_stream(port, body, result), timeout)
    except asyncio.TimeoutError:
        result.error = f"no answer within {timeout:g} s"
    except Exception as exc:  # noqa: BLE001 - a broken answer fails this request, reported with the others
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def _stream(port: int, body: bytes, result: RequestResult) -> None:
    reader, writer = await http_client.send(port, "POST", "/v1/completions", body, accept="text/event-stream")
    try:
        status, headers = await http_client.read_head(reader)
        if status != 200:
            raw = await http_client.read_all(reader, headers)
            result.error = f"HTTP {status}: {raw.decode(errors='replace')[:500]}"
            return
        async for data in http_client.events(reader, headers):
            if _event(data, result):
                return
        result.error = "the stream ended without data: [DONE]"
    finally:
        writer.close()


def _event(data: str, result: RequestResult) -> bool:
    """Apply one server-sent event's data to ``result``; True at ``[DONE]``."""
    now = time.perf_counter() - result.sent
    if data == "[DONE]":
        result.e2e = now
        return True
    chunk = json.loads(data)
    if "error" in chunk:
        result.error = str(chunk["error"].get("message", chunk["error"]))
        return False
    if chunk.get("choices"):
        if result.ttft is None:
            result.ttft = now
        result.chunk_times.append(now)
        result.text += "".join(choice.get("text", "") for choice in chunk["choices"])
    if chunk.get("usage"):
        result.prompt_tokens = chunk["usage"]["prompt_tokens"]
        result.output_tokens = chunk["usage"]["completion_tokens"]
    return False


# -- the server process ------------------------------------------------------------------------


class ServerProcess:
    """``kcore serve --model MODEL --port 0`` in a subprocess with its output in a temporary log,
    started on entering (waits until it listens) and stopped with SIGTERM on leaving."""

    def __init__(self, model: Path, args: Sequence[str] = (), startup_timeout: float = 600.0) -> None:
        self.command = [
            sys.executable, "-c", "import sys; from kernel_core.cli import main; sys.exit(main())",
            "serve", "--model", str(model), "--host", HOST, "--port", "0", "--log-level", "info", *args,
        ]
        self.startup_timeout = startup_timeout
        self.port = 0
        self._folder = tempfile.TemporaryDirectory(prefix="kcore-bench-serve-")
        self.log = Path(self._folder.name) / "server.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        print(f"starting kcore {' '.join(self.command[3:])}", file=sys.stderr, flush=True)
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not (match := READY.search(self.log.read_text(errors="replace"))):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    how = f"exited with {self.process.returncode}" if self.process.poll() is not None else (
                        f"did not listen within {self.startup_timeout:g} s")
                    raise KernelCoreError(f"kcore serve {how}; its log ends:\n{self.tail()}")
                time.sleep(0.1)
        except BaseException:
            self._stop()
            raise
        self.port = int(match.group(1))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _stop(self, timeout: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._folder.cleanup()
