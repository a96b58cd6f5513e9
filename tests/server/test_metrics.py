"""``/metrics`` through ``prometheus_client``: scrapes parsed with its own parser, the per-request
measurements without a server, and a real server scraped while it serves concurrent requests."""

from __future__ import annotations

import http.client
import json
import math
import threading
import types
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.parser import text_string_to_metric_families

from kernel_core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from kernel_core.server import metrics as metrics_module
from kernel_core.server.metrics import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS, Metrics

from .conftest import API_KEY

STATS = types.SimpleNamespace(num_running=2, num_waiting=1, num_free_blocks=10, num_blocks=16, kv_cache_usage=0.375,
                              prefix_cache_hit_rate=0.5, num_preemptions=3)
COUNTERS = {"kcore_requests_total": ("finish_reason",), "kcore_http_requests_total": ("code",),
            "kcore_prompt_tokens_total": (), "kcore_generation_tokens_total": ()}
HISTOGRAMS = {"kcore_time_to_first_token_seconds": TTFT_BUCKETS, "kcore_inter_token_latency_seconds": ITL_BUCKETS,
              "kcore_e2e_request_latency_seconds": E2E_BUCKETS}
GAUGES = {"kcore_generation_tokens_per_second", "kcore_prompt_tokens_per_second", "kcore_num_requests_running",
          "kcore_num_requests_waiting", "kcore_kv_cache_usage_ratio", "kcore_kv_cache_free_blocks",
          "kcore_kv_cache_blocks", "kcore_prefix_cache_hit_rate", "kcore_num_preemptions", "kcore_adapters_loaded",
          "kcore_process_resident_memory_bytes"}
PROMPT = "The capital of France is"


def parse(text: str) -> dict[str, types.SimpleNamespace]:
    """A scrape's families by exposed name (counters keep ``_total``), each with its type and
    samples keyed by (sample name, sorted labels)."""
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name not in families, f"{name} exposed twice"
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[name] = types.SimpleNamespace(type=family.type, help=family.documentation, samples=samples)
    return families


def value(families: dict, name: str, **labels: str) -> float:
    """One sample of a parsed scrape (0 when absent: a labelled counter has no sample until used)."""
    family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    return families[family].samples.get((name, tuple(sorted(labels.items()))), 0.0)


def check_shape(families: dict) -> None:
    """Every series of today's list, with its type and labels, nothing more (no ``_created``), and
    histogram buckets as they are declared, cumulative and ending in ``_count``."""
    assert {n: f.type for n, f in families.items()} == {
        **dict.fromkeys(COUNTERS, "counter"), **dict.fromkeys(HISTOGRAMS, "histogram"), **dict.fromkeys(GAUGES, "gauge")}
    assert all(f.help for f in families.values())
    for name, labels in COUNTERS.items():
        for sample_name, sample_labels in families[name].samples:
            assert sample_name == name and tuple(k for k, _ in sample_labels) == labels
    for name, buckets in HISTOGRAMS.items():
        samples = families[name].samples
        assert {sample for sample, _ in samples} == {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        bounds = sorted((float(dict(labels)["le"]), count) for (sample, labels), count in samples.items()
                        if sample == f"{name}_bucket")
        assert [b for b, _ in bounds] == [*buckets, math.inf]
        counts = [c for _, c in bounds]
        assert counts == sorted(counts) and counts[-1] == samples[(f"{name}_count", ())]
    for name in GAUGES:
        assert set(families[name].samples) <= {(name, ())}


def _output(tokens: list[list[int]], finish: list[str | None]) -> RequestOutput:
    outputs = [CompletionOutput(i, "", list(t), f) for i, (t, f) in enumerate(zip(tokens, finish))]
    return RequestOutput("r", "p", [1, 2, 3], None, outputs, all(f is not None for f in finish), RequestMetrics(0.0))


def test_a_measured_request_parses_with_every_series(monkeypatch):
    clock = iter([1.0, 1.5, 1.7, 2.0, 2.5, 2.5])
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: next(clock))
    m = Metrics(lambda: STATS, lambda: 4)
    tracker = m.track(2, start=0.0)
    tracker.observe(_output([[5], []], [None, None]))  # t=1.0: first token of completion 0
    tracker.observe(_output([[5, 6], [7]], [None, None]))  # t=1.5: completion 1's first token is no gap
    tracker.observe(_output([[5, 6, 8, 9], [7]], ["length", None]))  # t=1.7: two tokens in one output
    tracker.close()  # t=2.0: completion 1 never finished
    families = parse(m.exposition().decode())  # t=2.5 for each tokens-per-second gauge
    check_shape(families)
    assert value(families, "kcore_requests_total", finish_reason="length") == 1
    assert value(families, "kcore_requests_total", finish_reason="abort") == 1
    assert len(families["kcore_requests_total"].samples) == 2
    assert value(families, "kcore_prompt_tokens_total") == 3 and value(families, "kcore_generation_tokens_total") == 5
    assert value(families, "kcore_time_to_first_token_seconds_count") == 1
    assert value(families, "kcore_time_to_first_token_seconds_sum") == 1.0
    assert value(families, "kcore_time_to_first_token_seconds_bucket", le="0.75") == 0
    assert value(families, "kcore_time_to_first_token_seconds_bucket", le="1.0") == 1
    assert value(families, "kcore_inter_token_latency_seconds_count") == 3  # 0.5 once, then 0.1 for each of two
    assert math.isclose(value(families, "kcore_inter_token_latency_seconds_sum"), 0.5 + 0.1 + 0.1)
    assert value(families, "kcore_inter_token_latency_seconds_bucket", le="0.1") == 2
    assert value(families, "kcore_e2e_request_latency_seconds_count") == 1
    assert value(families, "kcore_e2e_request_latency_seconds_sum") == 2.0
    assert families["kcore_http_requests_total"].samples == {}
    expected = {"kcore_num_requests_running": 2, "kcore_num_requests_waiting": 1, "kcore_kv_cache_usage_ratio": 0.375,
                "kcore_kv_cache_free_blocks": 10, "kcore_kv_cache_blocks": 16, "kcore_prefix_cache_hit_rate": 0.5,
                "kcore_num_preemptions": 3, "kcore_adapters_loaded": 4}
    assert {name: value(families, name) for name in expected} == expected
    assert value(families, "kcore_generation_tokens_per_second") == 5 / metrics_module.RATE_WINDOW
    assert value(families, "kcore_prompt_tokens_per_second") == 3 / metrics_module.RATE_WINDOW
    assert value(families, "kcore_process_resident_memory_bytes") > 0


def test_the_engine_stats_are_read_once_per_scrape():
    reads = []
    m = Metrics(lambda: reads.append(1) or STATS, lambda: 0)
    m.exposition()
    assert len(reads) == 1


def test_an_unknown_memory_size_leaves_its_sample_out(monkeypatch):
    monkeypatch.setattr(metrics_module, "resident_memory_bytes", lambda: None)
    families = parse(Metrics(lambda: STATS, lambda: 0).exposition().decode())
    assert families["kcore_process_resident_memory_bytes"].samples == {}
    check_shape(families)


def test_two_apps_in_one_process_count_apart():
    first, second = Metrics(lambda: STATS, lambda: 0), Metrics(lambda: STATS, lambda: 0)
    first.http.labels(code="200").inc()
    first.generation_tokens.inc(7)
    assert value(parse(first.exposition().decode()), "kcore_http_requests_total", code="200") == 1
    assert value(parse(first.exposition().decode()), "kcore_generation_tokens_total") == 7
    assert value(parse(second.exposition().decode()), "kcore_http_requests_total", code="200") == 0
    assert value(parse(second.exposition().decode()), "kcore_generation_tokens_total") == 0


def test_created_series_are_left_out_of_this_registry_only():
    m = Metrics(lambda: STATS, lambda: 0)
    m.requests.labels(finish_reason="stop").inc()
    assert "_created" not in m.exposition().decode()
    other = CollectorRegistry()
    PrometheusCounter("other_total", "A registry that is not the server's.", registry=other)
    assert "\nother_created " in generate_latest(other).decode()  # the library's process-wide switch is untouched


# -- a real server under concurrent load -------------------------------------------------------


def _post(server, body: dict) -> tuple[int, dict]:
    return server.request("POST", "/v1/completions", {"model": server.model, "prompt": PROMPT, **body})


def _plain(server, body: dict) -> tuple[int, list[str], int]:
    """Status, finish reasons and completion tokens of a request answered in one body."""
    status, out = _post(server, body)
    if status != 200:
        return status, [], 0
    return status, [c["finish_reason"] for c in out["choices"]], out["usage"]["completion_tokens"]


def _streamed(server, body: dict) -> tuple[int, list[str], int]:
    chunks = list(server.client().completions.create(model=server.model, prompt=PROMPT, stream=True,
                                                     stream_options={"include_usage": True}, **body))
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return 200, reasons, chunks[-1].usage.completion_tokens


def _dropped(server, body: dict) -> tuple[int, list[str], int]:
    """A stream its client leaves after the first event: its completion counts as aborted."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({"model": server.model, "prompt": PROMPT, **body}),
                       {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    response.close()
    connection.close()
    return 200, ["abort"], 0


def _load(stop: str) -> list[tuple[Callable, dict, str | None]]:
    """(how, request fields, each completion's expected finish reason) of every request of the
    load: plain and streamed, n of 1 and 2, ending at their length or at ``stop`` (the text the
    greedy 8 tokens make), dropped mid-stream, or refused (400)."""
    greedy = dict(temperature=0, ignore_eos=True)
    return [
        *[(_plain, dict(max_tokens=8, **greedy), "length") for _ in range(12)],
        *[(_plain, dict(max_tokens=6, temperature=1.0, seed=i, n=2, ignore_eos=True), "length") for i in range(6)],
        *[(_plain, dict(max_tokens=12, stop=[stop], **greedy), "stop") for _ in range(4)],
        *[(_streamed, dict(max_tokens=8, temperature=0, extra_body={"ignore_eos": True}), "length") for _ in range(6)],
        *[(_dropped, dict(max_tokens=900, stream=True, **greedy), "abort") for _ in range(4)],
        *[(_plain, dict(max_tokens=-1), None) for _ in range(3)],
    ]


def _scrape_until(server, done: threading.Event) -> int:
    """Scrape over and over until ``done``: each scrape parses to today's series, and no counter
    or histogram sample ever goes down from one scrape to the next. The number of scrapes."""
    previous: dict = {}
    scrapes = 0
    while not done.is_set() or scrapes < 2:
        status, text = server.request("GET", "/metrics", key=None)
        assert status == 200
        families = parse(text)
        check_shape(families)
        current = {(name, sample): v for name, f in families.items() if f.type != "gauge"
                   for sample, v in f.samples.items()}
        assert all(current.get(key, 0.0) >= before for key, before in previous.items()), "a counter went down"
        previous, scrapes = current, scrapes + 1
    return scrapes


def test_scrapes_under_concurrent_load_add_up(server):
    prompt_tokens = len(server.request("POST", "/tokenize", {"prompt": PROMPT})[1]["tokens"])
    status, greedy = _post(server, dict(max_tokens=8, temperature=0, ignore_eos=True))
    assert status == 200 and greedy["choices"][0]["text"]
    load = _load(greedy["choices"][0]["text"])
    before = parse(server.metrics())
    done = threading.Event()
    with ThreadPoolExecutor(len(load) + 2) as pool:
        scrapers = [pool.submit(_scrape_until, server, done) for _ in range(2)]
        try:
            results = [job.result() for job in [pool.submit(how, server, body) for how, body, _ in load]]
        finally:
            done.set()
        scrapes = [scraper.result() for scraper in scrapers]
    server.wait_idle(timeout=20)  # the dropped streams' aborts are counted once the server sees them go
    after = parse(server.metrics())
    check_shape(after)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert min(scrapes) >= 2
    codes = Counter(str(status) for status, _, _ in results)
    assert codes == {"200": len(load) - 3, "400": 3}
    assert {code: delta("kcore_http_requests_total", code=code) for code in codes} == codes
    reasons = Counter(reason for _, finished, _ in results for reason in finished)
    assert reasons == Counter(reason for _, body, reason in load if reason for _ in range(body.get("n", 1)))
    assert {r: delta("kcore_requests_total", finish_reason=r) for r in ("stop", "length", "abort", "error")} == {
        r: reasons[r] for r in ("stop", "length", "abort", "error")}
    engine_requests = codes["200"]
    assert delta("kcore_time_to_first_token_seconds_count") == engine_requests
    assert delta("kcore_e2e_request_latency_seconds_count") == engine_requests
    assert delta("kcore_prompt_tokens_total") == engine_requests * prompt_tokens
    known_tokens = sum(tokens for _, _, tokens in results)
    generated = delta("kcore_generation_tokens_total")
    assert generated >= known_tokens + reasons["abort"]  # each dropped stream brought at least its first token
    # Every token but the first of each completion is one gap (several tokens in one output
    # share it), so the gaps number at most the tokens less the completions.
    assert 0 < delta("kcore_inter_token_latency_seconds_count") <= generated - sum(reasons.values())
