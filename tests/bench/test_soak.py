"""``kcore bench soak``: the judging on synthetic samples (each failure path proven to fail the run
and the command's exit status), and the CI's short soak of a real ``kcore serve`` on the tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from kernel_core.bench import soak
from kernel_core.bench.soak_mix import ELEMENTS, Job, Outcome
from kernel_core.cli import bench

MIB = soak.MIB
BLOCKS = 40


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "soak", *argv])


def _samples(rss_mib: list[float], interval: float = 5.0) -> list[soak.Sample]:
    return [
        soak.Sample(t=i * interval, served=10 * i, health_status=200, num_running=4, num_waiting=2, kv_blocks=BLOCKS,
                    kv_free_blocks=BLOCKS - 12, kv_usage=12 / BLOCKS, rss_bytes=int(mib * MIB))
        for i, mib in enumerate(rss_mib)
    ]


def _idle(t: float, rss_mib: float, free: int = BLOCKS) -> soak.Sample:
    return soak.Sample(t=t, served=100, health_status=200, num_running=0, num_waiting=0, kv_blocks=BLOCKS,
                       kv_free_blocks=free, kv_usage=1 - free / BLOCKS, rss_bytes=int(rss_mib * MIB))


def _judge(samples: list[soak.Sample], final: soak.Sample | None, **overrides) -> tuple[list[str], dict]:
    kwargs = dict(warmup=10.0, rss_growth_mib=64.0, failures={}, server_5xx=0, unexercised=(), exit_code=0)
    return soak.judge(samples, final, **{**kwargs, **overrides})


def test_a_flat_rss_and_a_whole_pool_pass() -> None:
    """Growth during the warm-up does not count; noise after it stays under the bound."""
    samples = _samples([400, 450, 500, 510, 505, 540, 512])
    problems, rss = _judge(samples, _idle(35, 508))
    assert problems == []
    assert (rss["warmup_mib"], rss["warmup_t"], rss["max_mib"], rss["end_mib"]) == (500, 10.0, 540, 508)
    assert rss["growth_mib"] == pytest.approx(40) and rss["first_mib"] == 400


def test_a_growing_rss_fails_the_run() -> None:
    samples = _samples([400 + 10 * i for i in range(12)])  # +10 MiB every 5 s: a leak
    problems, rss = _judge(samples, _idle(60, 515))
    assert rss["warmup_mib"] == 420 and rss["max_mib"] == 515 and rss["growth_mib"] == pytest.approx(95)
    assert problems == ["RSS grew by 95.0 MiB after the warm-up (420.0 MiB at 10 s, 515.0 MiB at 60 s), over the "
                        "bound of 64 MiB"]


def test_growth_only_at_the_idle_end_still_counts() -> None:
    problems, _ = _judge(_samples([500] * 6), _idle(30, 580))
    assert len(problems) == 1 and problems[0].startswith("RSS grew by 80.0 MiB")


def test_a_run_too_short_for_its_warmup_cannot_pass() -> None:
    problems, rss = _judge(_samples([500, 501]), None, warmup=60.0)
    assert "growth_mib" not in rss
    assert problems == ["no RSS sample after the 60 s warm-up: the run was too short to judge memory",
                        "no idle sample at the end: the server stopped answering"]


def test_blocks_not_back_in_the_pool_once_idle_are_a_leak() -> None:
    problems, _ = _judge(_samples([500] * 6), _idle(30, 500, free=BLOCKS - 3))
    assert problems == [f"KV blocks leaked: 3 of {BLOCKS} blocks not free once idle (0 running, 0 waiting)"]
    stuck = _idle(30, 500)
    stuck.num_waiting = 1  # a request that never leaves the queue holds the server busy forever
    assert _judge(_samples([500] * 6), stuck)[0][0].startswith("KV blocks leaked: 0 of")


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"failures": {"HTTP 500": 2, "TimeoutError": 1}}, "3 unexpected failures (HTTP 500: 2, TimeoutError: 1)"),
    ({"server_5xx": 4}, "the server answered 4 requests with a 5xx status (kcore_http_requests_total)"),
    ({"unexercised": ["n>1", "logprobs"]}, "mix elements never exercised: n>1, logprobs"),
    ({"exit_code": -9}, "kcore serve exited with status -9 (0 expected, after SIGTERM)"),
])
def test_each_kind_of_failure_fails_the_run(overrides: dict, expected: str) -> None:
    assert _judge(_samples([500] * 6), _idle(30, 500), **overrides)[0] == [expected]


def test_an_unhealthy_server_during_the_run_fails_it() -> None:
    samples = _samples([500] * 6)
    samples[3].health_status = 503
    assert _judge(samples, _idle(30, 500))[0] == ["/health answered {503: 1} during the run"]


def test_a_failed_soak_exits_1_with_its_reasons(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's verdict path: a leaking run (synthetic load, no server) prints FAIL and exits 1."""
    run = soak.SoakRun(duration=60, warmup=10)
    job = Job(route="chat", model="m", adapter=False, prompts=("hi",), stream=True, n=1, max_tokens=4, logprobs=None,
              stop=(), temperature=0.0, seed=0)
    load = soak.Load(outcomes=[Outcome(job), Outcome(job).fail("HTTP 500", "internal error")],
                     samples=_samples([400 + 10 * i for i in range(12)]), final=_idle(60, 515, free=BLOCKS - 2),
                     metrics={'kcore_http_requests_total{code="500"}': 1.0}, seconds=60)
    monkeypatch.setattr(soak, "benchmark", lambda model, run: soak._report(model, run, [], load, 0))
    monkeypatch.setattr(bench, "resolve_model", Path)
    out = tmp_path / "soak.json"
    args = _parse("--duration", "60", "--warmup", "10", "--json", str(out))
    assert args.func(args) == 1
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["verdict"] == "fail" and report["errors"] == {"HTTP 500": 1}
    assert report["error_examples"] == {"HTTP 500": "internal error"}
    reasons = ["RSS grew by 95.0 MiB", "KV blocks leaked: 2 of 40", "1 unexpected failures (HTTP 500: 1)",
               "the server answered 1 requests with a 5xx", "mix elements never exercised: completion"]
    assert all(reason in captured.err for reason in reasons) and "FAILED" in captured.err
    assert "verdict: FAIL" in captured.out and all(reason in captured.out for reason in reasons)


@pytest.mark.parametrize("argv", [[], ["--duration", "0"], ["--duration", "10", "--concurrency", "0"],
                                  ["--duration", "10", "--rss-growth-mib", "-1"]])
def test_bad_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert "error:" in capsys.readouterr().err


def test_the_server_gets_queueing_defaults_and_the_engine_options_given() -> None:
    args = _parse("--duration", "5", "--num-kv-blocks", "64")
    assert bench._server_args(args, bench._SOAK_ENGINE_OPTIONS) == (
        "--max-num-seqs", "8", "--num-kv-blocks", "64", "--max-loras", "2")


def test_soak_on_the_tiny_model(
    tiny_model: Path, embedded_model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI's short soak: 35 s of the whole mix on a small pool (so it fills and preempts)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server process's torch threads
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
    out = tmp_path / "soak.json"
    args = _parse(
        "--model", str(tiny_model), "--duration", "35", "--warmup", "10", "--sample-interval", "2", "--seed", "1",
        "--adapter-dir", str(tmp_path / "adapters"), "--num-kv-blocks", str(BLOCKS), "--json", str(out),
    )
    code = args.func(args)
    printed = capsys.readouterr()
    report = json.loads(out.read_text())
    assert code == 0, (report["problems"], report.get("server_log_tail"))

    assert report["verdict"] == "pass" and report["problems"] == []
    requests = report["requests"]
    assert requests["served"] > 0 and requests["failed"] == 0 and report["errors"] == {}
    assert requests["sent"] == requests["served"] + requests["aborted"]
    assert all(report["exercised"][name] > 0 for name in ELEMENTS), report["exercised"]
    assert requests["aborted"] == report["exercised"]["abort mid-stream"] + report["exercised"]["abort before answer"]
    assert report["settings"]["adapters"] == ["a0", "a1", "a2", "a3"]

    server = report["server"]
    assert server["exit_code"] == 0 and server["finish_reasons"]["abort"] > 0
    assert not any(code.startswith("5") for code in server["http_codes"])
    final = report["final_sample"]
    assert final["kv_free_blocks"] == final["kv_blocks"] == BLOCKS and final["num_running"] == final["num_waiting"] == 0
    rss = report["rss"]
    assert rss["warmup_t"] >= 10 and rss["warmup_mib"] <= rss["max_mib"] and rss["bound_mib"] == 64
    assert rss["growth_mib"] == pytest.approx(rss["max_mib"] - rss["warmup_mib"]) and rss["growth_mib"] <= 64
    samples = report["samples"]
    assert len(samples) >= 10 and all(s["rss_mib"] > 0 and s["kv_blocks"] == BLOCKS for s in samples)
    assert max(s["kv_blocks"] - s["kv_free_blocks"] for s in samples) == report["kv"]["max_used_blocks"] > 0

    assert "verdict: PASS" in printed.out and "Errors by class: none" in printed.out
    assert "RSS MiB" in printed.out and "abort before answer" in printed.out


def test_plugin_options_are_passed_on_to_the_server_as_given() -> None:
    args = _parse("--duration", "5", "--plugin-option", "attention-backend.torch.bucket_bytes=65536")
    assert bench._server_args(args, bench._SOAK_ENGINE_OPTIONS)[-2:] == (
        "--plugin-option", "attention-backend.torch.bucket_bytes=65536")
