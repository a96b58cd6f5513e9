"""``GET /metrics`` through ``prometheus_client``: its registry, metric types and text exposition.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, never the library's global
one, so two servers or engines in one process (tests start several) neither clash on names nor
add up each other's counts. Counters and histograms are the library's, updated as each output
arrives (see :class:`RequestTracker`); gauges are read at scrape time by one custom collector
(:class:`_ScrapeTimeGauges`), so a scrape reads a single snapshot of the engine's published stats.

Series names are vLLM's with a ``kcore_`` prefix. Counters are declared with their exposed
``_total`` name (the library strips it and writes it back). The library also gives every
counter and histogram a ``_created`` sample, written in this text format as extra
``*_created`` gauge families; they are dropped for this registry only (:class:`_WithoutCreated`):
the library's own switch, ``disable_created_metrics()``, is process-wide and would change every
other registry in the process.

Request-level series are measured by the server around each engine request (see
:class:`RequestTracker`): time to first token from the moment the HTTP request was accepted,
inter-token latency as the gap between two outputs of one completion divided by the tokens it
brought, and each completion's finish reason.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel_core.outputs import RequestOutput

#: Buckets (seconds) of the latency histograms; vLLM's, trimmed at both ends.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
#: Seconds of history behind the tokens-per-second gauges.
RATE_WINDOW = 10.0


class _Rate:
    """Events per second over the last :data:`RATE_WINDOW` seconds."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()

    def add(self, amount: int, now: float) -> None:
        if amount:
            self.events.append((now, amount))

    def per_second(self, now: float) -> float:
        while self.events and self.events[0][0] < now - RATE_WINDOW:
            self.events.popleft()
        return sum(amount for _, amount in self.events) / RATE_WINDOW


def resident_memory_bytes() -> int | None:
    """This process's resident set size (Linux ``/proc``); None elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _ScrapeTimeGauges(Collector):
    """Gauges read when scraped, from one snapshot of the engine's stats per scrape; a value of
    None leaves its sample out (the family's HELP and TYPE stay)."""

    def __init__(self, stats: Callable[[], object],
                 gauges: list[tuple[str, str, Callable[[object], float | None]]]) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        snapshot = self.stats()
        for name, help, read in self.gauges:
            family = GaugeMetricFamily(name, help)
            value = read(snapshot)
            if value is not None:
                family.add_metric([], value)
            yield family


class _WithoutCreated(Collector):
    """A registry's families without their ``_created`` samples (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():  # fresh snapshots: changing them touches no metric
            family.samples = [s for s in family.samples if s.name != f"{family.name}_created"]
            yield family


class Metrics:
    """Every series of ``/metrics``, in a registry of their own; ``stats`` returns the engine's
    latest :class:`EngineStats` and ``num_adapters`` the loaded adapters, both read at scrape time."""

    def __init__(self, stats: Callable[[], object], num_adapters: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("kcore_requests_total",
                                "Finished completions by finish reason (stop, length, abort, error).",
                                ["finish_reason"], registry=r)
        self.http = Counter("kcore_http_requests_total", "HTTP responses of /v1 routes by status code.", ["code"],
                            registry=r)
        self.prompt_tokens = Counter("kcore_prompt_tokens_total", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter("kcore_generation_tokens_total", "Tokens generated.", registry=r)
        self.ttft = Histogram("kcore_time_to_first_token_seconds", "From the HTTP request to the first generated token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("kcore_inter_token_latency_seconds", "Time between two tokens of a completion.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("kcore_e2e_request_latency_seconds", "From the HTTP request to its last token.",
                             buckets=E2E_BUCKETS, registry=r)
        self._prompt_rate = _Rate()
        self._generation_rate = _Rate()
        r.register(_ScrapeTimeGauges(stats, [
            ("kcore_generation_tokens_per_second", f"Generated tokens per second over the last {RATE_WINDOW:g} s.",
             lambda _: self._generation_rate.per_second(time.monotonic())),
            ("kcore_prompt_tokens_per_second", f"Prompt tokens admitted per second over the last {RATE_WINDOW:g} s.",
             lambda _: self._prompt_rate.per_second(time.monotonic())),
            ("kcore_num_requests_running", "Requests scheduled in the engine.", lambda s: s.num_running),
            ("kcore_num_requests_waiting", "Requests queued in the engine.", lambda s: s.num_waiting),
            ("kcore_kv_cache_usage_ratio", "Share of KV-cache blocks in use (0-1).", lambda s: s.kv_cache_usage),
            ("kcore_kv_cache_free_blocks", "Free KV-cache blocks.", lambda s: s.num_free_blocks),
            ("kcore_kv_cache_blocks", "KV-cache blocks in all.", lambda s: s.num_blocks),
            ("kcore_prefix_cache_hit_rate", "Share of looked-up prompt tokens found in the prefix cache.",
             lambda s: s.prefix_cache_hit_rate),
            ("kcore_num_preemptions", "Preemptions since the engine started.", lambda s: s.num_preemptions),
            ("kcore_adapters_loaded", "Adapters loaded.", lambda _: num_adapters()),
            ("kcore_process_resident_memory_bytes", "Resident memory of the server process.",
             lambda _: resident_memory_bytes()),
        ]))
        self._exposed = _WithoutCreated(r)

    def track(self, n: int, start: float) -> RequestTracker:
        return RequestTracker(self, n, start)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every series (``Content-Type``: ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self._exposed)


class RequestTracker:
    """The metrics of one engine request (``n`` completions), fed each of its outputs."""

    def __init__(self, metrics: Metrics, n: int, start: float) -> None:
        self.metrics = metrics
        self.start = start  # time.monotonic() when the HTTP request was accepted
        self.tokens = [0] * n
        self.last = [start] * n
        self.reasons: list[str | None] = [None] * n
        self.first_token = False
        self.counted_prompt = False
        self.closed = False

    def observe(self, output: RequestOutput) -> None:
        now = time.monotonic()
        m = self.metrics
        if not self.counted_prompt:
            self.counted_prompt = True
            m.prompt_tokens.inc(len(output.prompt_token_ids))
            m._prompt_rate.add(len(output.prompt_token_ids), now)
        for completion in output.outputs:
            i = completion.index
            new = len(completion.token_ids) - self.tokens[i]
            if new > 0:
                if not self.first_token:
                    self.first_token = True
                    m.ttft.observe(now - self.start)
                elif self.tokens[i] > 0:
                    gap = (now - self.last[i]) / new
                    for _ in range(new):  # one observation per token the output brought
                        m.itl.observe(gap)
                self.tokens[i] += new
                self.last[i] = now
                m.generation_tokens.inc(new)
                m._generation_rate.add(new, now)
            if completion.finish_reason is not None and self.reasons[i] is None:
                self.reasons[i] = completion.finish_reason
                m.requests.labels(finish_reason=completion.finish_reason).inc()
        if output.finished:
            self.close()

    def close(self) -> None:
        """The request ended (or its consumer left): unfinished completions count as aborted."""
        if self.closed:
            return
        self.closed = True
        for i, reason in enumerate(self.reasons):
            if reason is None:
                self.reasons[i] = "abort"
                self.metrics.requests.labels(finish_reason="abort").inc()
        if self.first_token:
            self.metrics.e2e.observe(time.monotonic() - self.start)
