"""The Prometheus text exposition and the per-request measurements, without a server."""

from __future__ import annotations

import types

from kernel_core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from kernel_core.server import metrics as metrics_module
from kernel_core.server.metrics import Counter, Histogram, Metrics

STATS = types.SimpleNamespace(num_running=2, num_waiting=1, num_free_blocks=10, num_blocks=16, kv_cache_usage=0.375,
                              prefix_cache_hit_rate=0.5, num_preemptions=3)


def test_counter_and_histogram_text():
    counter = Counter("c_total", "help text", "reason")
    counter.inc(label='a"b\\')
    counter.inc(2, label="x")
    assert counter.render() == ["# HELP c_total help text", "# TYPE c_total counter",
                                'c_total{reason="a\\"b\\\\"} 1', 'c_total{reason="x"} 2']
    assert Counter("plain_total", "h").render()[-1] == "plain_total 0"
    histogram = Histogram("h_seconds", "h", (0.1, 1.0))
    histogram.observe(0.05)
    histogram.observe(0.5, 2)
    histogram.observe(7)
    assert histogram.render()[2:] == ['h_seconds_bucket{le="0.1"} 1', 'h_seconds_bucket{le="1"} 3',
                                      'h_seconds_bucket{le="+Inf"} 4', "h_seconds_sum 8.05", "h_seconds_count 4"]


def _output(tokens: list[int], finish: list[str | None]) -> RequestOutput:
    outputs = [CompletionOutput(i, "", list(t), f) for i, (t, f) in enumerate(zip(tokens, finish))]
    return RequestOutput("r", "p", [1, 2, 3], None, outputs, all(f is not None for f in finish), RequestMetrics(0.0))


def test_a_request_is_measured(monkeypatch):
    clock = iter([1.0, 1.5, 1.7, 2.0, 2.0])
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: next(clock))
    m = Metrics(lambda: STATS, lambda: 4)
    tracker = m.track(2, start=0.0)
    tracker.observe(_output([[5], []], [None, None]))  # t=1.0: first token of completion 0
    tracker.observe(_output([[5, 6], [7]], [None, None]))  # t=1.5
    tracker.observe(_output([[5, 6, 8, 9], [7]], ["length", None]))  # t=1.7: two tokens in one output
    tracker.close()  # t=2.0: completion 1 never finished
    assert m.ttft.count == 1 and m.ttft.sum == 1.0
    assert m.itl.count == 3 and abs(m.itl.sum - (0.5 + 0.1 + 0.1)) < 1e-9
    assert m.requests.values == {"length": 1.0, "abort": 1.0}
    assert m.generation_tokens.get() == 5 and m.prompt_tokens.get() == 3
    assert m.e2e.count == 1


def test_render_reads_the_engine_stats():
    text = Metrics(lambda: STATS, lambda: 4).render()
    for line in ("kcore_num_requests_running 2", "kcore_num_requests_waiting 1", "kcore_kv_cache_usage_ratio 0.375",
                 "kcore_kv_cache_free_blocks 10", "kcore_prefix_cache_hit_rate 0.5", "kcore_adapters_loaded 4",
                 "kcore_num_preemptions 3"):
        assert f"\n{line}\n" in text
    assert text.endswith("\n")
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
