"""``kcore bench soak``: a real ``kcore serve`` process under a mixed load for a set time, watched
for what only shows over time: memory that grows, KV blocks that never come back, rare failures.

The server runs as ``kcore bench serve`` runs it (a subprocess on 127.0.0.1, a free port), with
``--adapters`` deterministic LoRA adapters (those of ``kcore bench lora``, made once and reused)
served as models beside the base. ``--concurrency`` clients each send one request of the seeded
mix (:mod:`kernel_core.bench.soak_mix`) after another until ``--duration`` is up; a sampler reads
``/health`` and ``/metrics`` every ``--sample-interval`` seconds (RSS, KV blocks, queues). Then
the soak waits for the server to go idle, takes a last sample and judges the run (:func:`judge`):

- the server's RSS may not grow by more than ``--rss-growth-mib`` over its level at the end of
  the warm-up (the first minutes grow allocator pools, caches and label sets once);
- once idle, every KV block must be free again (a block held by no request is a leak);
- every request must be served or aborted as its client planned; any other outcome (an HTTP error,
  a broken stream, an answer that does not match its request, a timeout) fails the run, and so do
  5xx answers the server counted, a ``/health`` other than 200, and a server that exits non-zero;
- every element of the mix must have been exercised at least once.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kernel_core.bench import http_client
from kernel_core.bench.adapters import ensure_adapters
from kernel_core.bench.machine import describe_cpu, summary
from kernel_core.bench.report import _table
from kernel_core.bench.serve import ServerProcess, latency_stats
from kernel_core.bench.soak_mix import ELEMENTS, Outcome, draw_job, run_job
from kernel_core.bench.workloads import AdapterSpec

MIB = 2**20
#: The soak's adapters: rank 8 on every linear layer of the model (made with our PEFT, B non-zero).
ADAPTER_SPEC = AdapterSpec(count=4, rank=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"))
#: Rows of the sample table on stdout (the JSON keeps every sample).
TABLE_ROWS = 12


@dataclass(frozen=True)
class SoakRun:
    """What ``kcore bench soak`` runs."""

    duration: float
    concurrency: int = 16
    seed: int = 0
    adapters: int = ADAPTER_SPEC.count
    max_tokens: int = 32
    #: Seconds after which the RSS baseline is taken; None: a quarter of the duration, at most 120 s.
    warmup: float | None = None
    sample_interval: float = 5.0
    rss_growth_mib: float = 64.0
    #: ``kcore serve`` options besides the adapters, as command-line arguments.
    server_args: tuple[str, ...] = ()
    adapter_dir: Path | None = None
    startup_timeout: float = 600.0
    request_timeout: float = 300.0
    #: Seconds the server may take to finish what is in flight and free every block at the end.
    idle_timeout: float = 120.0

    @property
    def warmup_s(self) -> float:
        return self.warmup if self.warmup is not None else min(self.duration / 4, 120.0)


@dataclass
class Sample:
    """The server at one moment: ``t`` in seconds from the start of the load."""

    t: float
    served: int
    health_status: int | None = None
    num_running: int | None = None
    num_waiting: int | None = None
    kv_blocks: int | None = None
    kv_free_blocks: int | None = None
    #: ``kcore_kv_cache_usage_ratio`` and ``kcore_process_resident_memory_bytes`` from /metrics.
    kv_usage: float | None = None
    rss_bytes: int | None = None
    error: str | None = None

    @property
    def pool_whole(self) -> bool:
        return self.kv_blocks is not None and self.kv_free_blocks == self.kv_blocks

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rss_mib": None if self.rss_bytes is None else self.rss_bytes / MIB}


@dataclass
class Load:
    """What the load phase gathered."""

    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    final: Sample | None = None
    #: The server's ``/metrics`` as last read (at the idle sample, when the run got that far).
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: Why the load stopped before its time, if it did.
    stopped_early: str | None = None


def benchmark(model: Path, run: SoakRun) -> dict[str, Any]:
    """Make or reuse the adapters, start ``kcore serve``, run the load, stop it; the judged report."""
    names: list[str] = []
    adapter_args: list[str] = []
    if run.adapters:
        made = ensure_adapters(model, ADAPTER_SPEC, run.adapters, run.seed, run.adapter_dir)
        names = [path.name for path in made.paths]
        adapter_args = [arg for path in made.paths for arg in ("--adapter", f"{path.name}={path}")]
    with ServerProcess(model, (*adapter_args, *run.server_args), run.startup_timeout) as server:
        print(f"kcore serve is up on port {server.port}; soaking for {run.duration:g} s", file=sys.stderr, flush=True)
        load = asyncio.run(_load(server.port, str(model), names, run, lambda: server.process.poll() is None))
        log_tail = server.tail()
    exit_code = server.process.returncode
    report = _report(model, run, names, load, exit_code)
    if report["problems"]:
        report["server_log_tail"] = log_tail
    return report


# -- the load ----------------------------------------------------------------------------------


async def _load(port: int, base: str, adapters: list[str], run: SoakRun, alive: Callable[[], bool]) -> Load:
    load = Load()
    rng = random.Random(run.seed)
    start = time.perf_counter()
    deadline = start + run.duration
    stop = asyncio.Event()

    async def client() -> None:
        while time.perf_counter() < deadline and not stop.is_set():
            outcome = await run_job(port, draw_job(rng, base, adapters, run.max_tokens), run.request_timeout)
            load.outcomes.append(outcome)
            if outcome.status == "failed":
                await asyncio.sleep(0.1)  # a broken server is not hammered in a tight loop

    async def sampler() -> None:
        while not stop.is_set():
            sample = await _sample(port, start, load)
            load.samples.append(sample)
            print(_progress(sample, load.outcomes), file=sys.stderr, flush=True)
            if sample.error is not None and not alive():
                load.stopped_early = f"the server exited during the run (last sample: {sample.error})"
                stop.set()
            try:
                await asyncio.wait_for(stop.wait(), run.sample_interval)
            except asyncio.TimeoutError:
                pass

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*(client() for _ in range(run.concurrency)))
    load.seconds = time.perf_counter() - start
    stop.set()
    await sampling
    if load.stopped_early is None:
        load.final = await _wait_idle(port, start, load, run.idle_timeout)
    return load


async def _sample(port: int, start: float, load: Load) -> Sample:
    """The server now; its metrics also go to ``load.metrics``."""
    sample = Sample(t=time.perf_counter() - start, served=sum(o.status == "ok" for o in load.outcomes))
    try:
        sample.health_status, body = await http_client.get(port, "/health")
        health = json.loads(body)
        for key in ("num_running", "num_waiting", "num_free_blocks", "num_blocks"):
            setattr(sample, {"num_free_blocks": "kv_free_blocks", "num_blocks": "kv_blocks"}.get(key, key), health[key])
        load.metrics = metrics = parse_metrics((await http_client.get(port, "/metrics"))[1].decode())
        sample.kv_usage = metrics.get("kcore_kv_cache_usage_ratio")
        rss = metrics.get("kcore_process_resident_memory_bytes")
        sample.rss_bytes = None if rss is None else int(rss)
    except Exception as exc:  # noqa: BLE001 - a server that does not answer is recorded, then judged
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


async def _wait_idle(port: int, start: float, load: Load, timeout: float) -> Sample:
    """Poll until nothing runs or waits and the pool is whole, or ``timeout``; the last sample."""
    deadline = time.perf_counter() + timeout
    while True:
        sample = await _sample(port, start, load)
        idle = sample.num_running == 0 and sample.num_waiting == 0 and sample.pool_whole
        if idle or sample.error is not None or time.perf_counter() > deadline:
            return sample
        await asyncio.sleep(0.1)


def _progress(sample: Sample, outcomes: Sequence[Outcome]) -> str:
    """One line per sample on stderr, so a long soak's log shows how it goes."""
    if sample.error is not None:
        return f"soak {sample.t:7.1f} s: no answer from the server: {sample.error}"
    failed = sum(o.status == "failed" for o in outcomes)
    rss = "-" if sample.rss_bytes is None else f"{sample.rss_bytes / MIB:.1f}"
    return (f"soak {sample.t:7.1f} s: {sample.served} served, {failed} failed, {sample.num_running} running, "
            f"{sample.num_waiting} waiting, KV {sample.kv_blocks - sample.kv_free_blocks}/{sample.kv_blocks}, "
            f"RSS {rss} MiB")


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, keyed by name and labels as written."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


# -- judging -----------------------------------------------------------------------------------


def judge(
    samples: Sequence[Sample],
    final: Sample | None,
    *,
    warmup: float,
    rss_growth_mib: float,
    failures: Mapping[str, int],
    server_5xx: int = 0,
    unexercised: Sequence[str] = (),
    exit_code: int | None = 0,
) -> tuple[list[str], dict[str, Any]]:
    """The problems that fail a soak (none: it passed) and the RSS figures they were judged on.

    The RSS baseline is the first sample at or after ``warmup`` seconds; growth is the highest RSS
    from there on (the final idle sample included) minus that baseline.
    """
    problems = []
    after = [s for s in [*samples, *([final] if final else [])] if s.t >= warmup and s.rss_bytes is not None]
    rss: dict[str, Any] = {"bound_mib": rss_growth_mib, "warmup_s": warmup}
    if not after:
        problems.append(f"no RSS sample after the {warmup:g} s warm-up: the run was too short to judge memory")
    else:
        baseline, peak = after[0], max(after, key=lambda s: s.rss_bytes)
        rss.update(
            first_mib=next((s.rss_bytes / MIB for s in samples if s.rss_bytes is not None), None),
            warmup_mib=baseline.rss_bytes / MIB, warmup_t=baseline.t, max_mib=peak.rss_bytes / MIB, max_t=peak.t,
            end_mib=after[-1].rss_bytes / MIB, growth_mib=(peak.rss_bytes - baseline.rss_bytes) / MIB,
        )
        if rss["growth_mib"] > rss_growth_mib:
            problems.append(
                f"RSS grew by {rss['growth_mib']:.1f} MiB after the warm-up ({rss['warmup_mib']:.1f} MiB at "
                f"{baseline.t:.0f} s, {rss['max_mib']:.1f} MiB at {peak.t:.0f} s), over the bound of "
                f"{rss_growth_mib:g} MiB"
            )
    if final is None:
        problems.append("no idle sample at the end: the server stopped answering")
    elif final.error is not None:
        problems.append(f"the server did not answer at the end: {final.error}")
    elif not final.pool_whole or final.num_running or final.num_waiting:
        problems.append(
            f"KV blocks leaked: {final.kv_blocks - final.kv_free_blocks} of {final.kv_blocks} blocks not free once "
            f"idle ({final.num_running} running, {final.num_waiting} waiting)"
        )
    if failures:
        listed = ", ".join(f"{name}: {count}" for name, count in sorted(failures.items()))
        problems.append(f"{sum(failures.values())} unexpected failures ({listed})")
    if server_5xx:
        problems.append(f"the server answered {server_5xx:g} requests with a 5xx status (kcore_http_requests_total)")
    unhealthy = Counter(s.health_status for s in samples if s.health_status not in (None, 200))
    if unhealthy:
        problems.append(f"/health answered {dict(unhealthy)} during the run")
    if unexercised:
        problems.append(f"mix elements never exercised: {', '.join(unexercised)}")
    if exit_code != 0:
        problems.append(f"kcore serve exited with status {exit_code} (0 expected, after SIGTERM)")
    return problems, rss


# -- the report --------------------------------------------------------------------------------


def _report(model: Path, run: SoakRun, adapters: list[str], load: Load, exit_code: int | None) -> dict[str, Any]:
    outcomes = load.outcomes
    served = [o for o in outcomes if o.status == "ok"]
    exercised = Counter(name for o in served for name in o.job.elements())
    exercised.update(f"abort {o.job.abort}" for o in outcomes if o.status == "aborted")
    failures = Counter(o.error_class for o in outcomes if o.status == "failed")
    failures.update(f"sample: {s.error.split(':')[0]}" for s in load.samples if s.error is not None)
    server_5xx = sum(v for k, v in load.metrics.items() if k.startswith('kcore_http_requests_total{code="5'))
    problems, rss = judge(
        load.samples, load.final, warmup=run.warmup_s, rss_growth_mib=run.rss_growth_mib, failures=failures,
        server_5xx=int(server_5xx), unexercised=[name for name in ELEMENTS if not exercised[name]], exit_code=exit_code,
    )
    if load.stopped_early:
        problems.insert(0, load.stopped_early)
    kv = [s for s in load.samples if s.kv_blocks]
    return {
        "benchmark": "soak",
        "model": str(model),
        "cpu": describe_cpu(),
        "settings": {**asdict(run), "warmup": run.warmup_s, "adapter_dir": str(run.adapter_dir or ""),
                     "server_args": list(run.server_args), "adapters": adapters},
        "seconds": load.seconds,
        "requests": {
            "sent": len(outcomes), "served": len(served), "aborted": sum(o.status == "aborted" for o in outcomes),
            "failed": sum(o.status == "failed" for o in outcomes),
            "completion_tokens": sum(o.completion_tokens for o in served),
        },
        "exercised": {name: exercised[name] for name in ELEMENTS},
        "errors": dict(failures),
        "error_examples": {name: next(o.detail for o in outcomes if o.error_class == name)
                           for name in failures if not name.startswith("sample: ")},
        "latency": {**latency_stats("ttft", [o.ttft for o in served if o.ttft is not None]),
                    **latency_stats("e2e", [o.e2e for o in served if o.e2e is not None])},
        "server": {
            "finish_reasons": _labelled(load.metrics, "kcore_requests_total", "finish_reason"),
            "http_codes": _labelled(load.metrics, "kcore_http_requests_total", "code"),
            "preemptions": load.metrics.get("kcore_num_preemptions"),
            "exit_code": exit_code,
        },
        "rss": rss,
        "kv": {
            "blocks": kv[-1].kv_blocks if kv else None,
            "max_used_blocks": max((s.kv_blocks - s.kv_free_blocks for s in kv), default=None),
            "mean_usage": sum(s.kv_usage or 0.0 for s in kv) / len(kv) if kv else None,
            "free_blocks_at_end": load.final.kv_free_blocks if load.final else None,
        },
        "samples": [s.to_dict() for s in load.samples],
        "final_sample": load.final.to_dict() if load.final else None,
        "verdict": "fail" if problems else "pass",
        "problems": problems,
    }


def _labelled(metrics: Mapping[str, float], name: str, label: str) -> dict[str, float]:
    prefix = f'{name}{{{label}="'
    return {key[len(prefix):-2]: value for key, value in metrics.items() if key.startswith(prefix)}


def render(report: dict[str, Any]) -> str:
    """The run's settings, requests, mix, errors, a compact sample table, RSS and KV, the verdict."""
    settings, requests, rss, cpu = report["settings"], report["requests"], report["rss"], report["cpu"]
    samples = report["samples"] + ([report["final_sample"]] if report["final_sample"] else [])
    step = max(1, -(-len(samples) // TABLE_ROWS))
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    parts = [
        f"soak of kcore serve on {report['model']}: {report['seconds']:.0f} s of load, concurrency "
        f"{settings['concurrency']}, seed {settings['seed']}, adapters {', '.join(settings['adapters']) or 'none'}\n"
        + summary(cpu),
        _table(["sent", "served", "aborted", "failed", "completion tokens"],
               [[requests[k] for k in ("sent", "served", "aborted", "failed", "completion_tokens")]]),
        "Mix (served requests per element; aborts as they happened)",
        _table(["element", "count"], [[name, count] for name, count in report["exercised"].items()]),
        "Errors by class" if report["errors"] else "Errors by class: none",
    ]
    if report["errors"]:
        parts.append(_table(["class", "count", "first"], [[name, count, report["error_examples"].get(name, "")[:80]]
                                                          for name, count in report["errors"].items()]))
    parts += [
        "Server over time (the last row is the idle server at the end)",
        _table(
            ["t s", "served", "running", "waiting", "KV used", "KV blocks", "KV usage", "RSS MiB"],
            [[round(s["t"]), s["served"], s["num_running"], s["num_waiting"],
              None if s["kv_blocks"] is None else s["kv_blocks"] - s["kv_free_blocks"], s["kv_blocks"],
              s["kv_usage"], s["rss_mib"]] for s in shown],
        ),
        f"RSS: {_mib(rss.get('first_mib'))} at the first sample, {_mib(rss.get('warmup_mib'))} after the "
        f"{rss['warmup_s']:g} s warm-up, {_mib(rss.get('max_mib'))} at most, {_mib(rss.get('end_mib'))} at the end: "
        f"growth {_mib(rss.get('growth_mib'))} (bound {rss['bound_mib']:g} MiB)",
        f"KV: {report['kv']['blocks']} blocks, at most {report['kv']['max_used_blocks']} in use, "
        f"{report['kv']['free_blocks_at_end']} free at the end",
        f"The server counted: completions by finish reason {_counts(report['server']['finish_reasons'])}, /v1 "
        f"answers by status {_counts(report['server']['http_codes'])}, {_counts(report['server']['preemptions'])} "
        f"preemptions; it exited with {report['server']['exit_code']}",
        "verdict: PASS" if report["verdict"] == "pass" else "verdict: FAIL\n" + "\n".join(
            f"  - {p}" for p in report["problems"]),
    ]
    return "\n\n".join(parts) + "\n"


def _counts(values: Mapping[str, float] | float | None) -> str:
    """Counters as integers: the exposition writes them as floats."""
    if isinstance(values, Mapping):
        return "{" + ", ".join(f"{key}: {value:.0f}" for key, value in values.items()) + "}"
    return "-" if values is None else f"{values:.0f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
