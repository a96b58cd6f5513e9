"""``GET /metrics``: Prometheus text exposition (format 0.0.4), written here in a few lines.

Why not ``prometheus_client``: the server needs three metric types, one registry per app, and
no push or multiprocess mode; the format is a few lines of text, and the project keeps its
chosen dependencies. Counters and histograms are updated on the event loop only (no lock needed);
gauges are read at scrape time from the engine's published stats.

Request-level series are measured by the server around each engine request (see
:class:`RequestTracker`): time to first token from the moment the HTTP request was accepted,
inter-token latency as the gap between two outputs of one completion divided by the tokens it
brought, and each completion's finish reason.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable

from kernel_core.outputs import RequestOutput

#: Buckets (seconds) of the latency histograms; vLLM's, trimmed at both ends.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
#: Seconds of history behind the tokens-per-second gauges.
RATE_WINDOW = 10.0


def _value(number: float) -> str:
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(float(number)) if not float(number).is_integer() else str(int(number))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    escaped = [
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + "n").replace(chr(34), chr(92) + chr(34))}"'
        for key, value in pairs
    ]
    return "{" + ",".join(escaped) + "}" if escaped else ""


class Counter:
    def __init__(self, name: str, help: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, float] = {}

    def inc(self, amount: float = 1.0, label: str = "") -> None:
        self.values[label] = self.values.get(label, 0.0) + amount

    def get(self, label: str = "") -> float:
        return self.values.get(label, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        values = self.values or ({} if self.label else {"": 0.0})
        for label, value in sorted(values.items()):
            pairs = [(self.label, label)] if self.label else []
            lines.append(f"{self.name}{_labels(pairs)} {_value(value)}")
        return lines


class Gauge:
    """A value read when scraped; ``read`` returning None leaves the sample out."""

    def __init__(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        value = self.read()
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        return lines + ([f"{self.name} {_value(value)}"] if value is not None else [])


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help = name, help
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            cumulative += count
            lines.append(f"{self.name}_bucket{_labels([('le', _value(bound))])} {cumulative}")
        lines += [f"{self.name}_sum {_value(self.sum)}", f"{self.name}_count {self.count}"]
        return lines


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


class Metrics:
    """Every series of ``/metrics``; ``stats`` returns the engine's latest :class:`EngineStats`
    and ``num_adapters`` the loaded adapters, both read at scrape time."""

    def __init__(self, stats: Callable[[], object], num_adapters: Callable[[], int]) -> None:
        self.requests = Counter(
            "kcore_requests_total", "Finished completions by finish reason (stop, length, abort, error).",
            "finish_reason",
        )
        self.http = Counter("kcore_http_requests_total", "HTTP responses of /v1 routes by status code.", "code")
        self.prompt_tokens = Counter("kcore_prompt_tokens_total", "Prompt tokens of admitted requests.")
        self.generation_tokens = Counter("kcore_generation_tokens_total", "Tokens generated.")
        self.ttft = Histogram(
            "kcore_time_to_first_token_seconds", "From the HTTP request to the first generated token.", TTFT_BUCKETS
        )
        self.itl = Histogram("kcore_inter_token_latency_seconds", "Time between two tokens of a completion.", ITL_BUCKETS)
        self.e2e = Histogram("kcore_e2e_request_latency_seconds", "From the HTTP request to its last token.", E2E_BUCKETS)
        self._prompt_rate = _Rate()
        self._generation_rate = _Rate()
        s = stats
        self.gauges = [
            Gauge("kcore_generation_tokens_per_second", f"Generated tokens per second over the last {RATE_WINDOW:g} s.",
                  lambda: self._generation_rate.per_second(time.monotonic())),
            Gauge("kcore_prompt_tokens_per_second", f"Prompt tokens admitted per second over the last {RATE_WINDOW:g} s.",
                  lambda: self._prompt_rate.per_second(time.monotonic())),
            Gauge("kcore_num_requests_running", "Requests scheduled in the engine.", lambda: s().num_running),
            Gauge("kcore_num_requests_waiting", "Requests queued in the engine.", lambda: s().num_waiting),
            Gauge("kcore_kv_cache_usage_ratio", "Share of KV-cache blocks in use (0-1).", lambda: s().kv_cache_usage),
            Gauge("kcore_kv_cache_free_blocks", "Free KV-cache blocks.", lambda: s().num_free_blocks),
            Gauge("kcore_kv_cache_blocks", "KV-cache blocks in all.", lambda: s().num_blocks),
            Gauge("kcore_prefix_cache_hit_rate", "Share of looked-up prompt tokens found in the prefix cache.",
                  lambda: s().prefix_cache_hit_rate),
            Gauge("kcore_num_preemptions", "Preemptions since the engine started.", lambda: s().num_preemptions),
            Gauge("kcore_adapters_loaded", "LoRA adapters loaded.", num_adapters),
            Gauge("kcore_process_resident_memory_bytes", "Resident memory of the server process.",
                  resident_memory_bytes),
        ]

    def track(self, n: int, start: float) -> RequestTracker:
        return RequestTracker(self, n, start)

    def render(self) -> str:
        series = [self.requests, self.http, self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e,
                  *self.gauges]
        return "\n".join(line for metric in series for line in metric.render()) + "\n"


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
                    m.itl.observe((now - self.last[i]) / new, new)
                self.tokens[i] += new
                self.last[i] = now
                m.generation_tokens.inc(new)
                m._generation_rate.add(new, now)
            if completion.finish_reason is not None and self.reasons[i] is None:
                self.reasons[i] = completion.finish_reason
                m.requests.inc(label=completion.finish_reason)
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
                self.metrics.requests.inc(label="abort")
        if self.first_token:
            self.metrics.e2e.observe(time.monotonic() - self.start)
