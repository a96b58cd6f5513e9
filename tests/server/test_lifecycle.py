"""Graceful shutdown of a real ``kcore serve``: on SIGTERM it stops accepting, lets in-flight
requests finish within ``--shutdown-timeout`` (cutting off what runs longer), and exits 0. Ctrl-C
(SIGINT) drains the same way and exits 130 with one line; a second one cuts the drain short; one
before the server listens stops the loading."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from ..cli.kcore_process import assert_stopped_by_ctrl_c, wait_until
from .conftest import metric, spawn_server, start_server

PROMPT = "Once upon a time"


def _stream(port: int, max_tokens: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def _events(response: http.client.HTTPResponse) -> list[str]:
    try:
        raw = response.read().decode()
    except http.client.IncompleteRead as cut:  # the server closed the stream mid-way
        raw = cut.partial.decode()
    return [event for event in raw.split("\n\n") if event]


@pytest.fixture
def serve(tiny_model: Path, embedded_model_cache: Path, tmp_path: Path):
    started = []

    def start(*args: str, wait: bool = True):
        launch = start_server if wait else spawn_server
        server = launch(tiny_model, tmp_path / f"server{len(started)}.log", "--served-model-name", "m",
                        "--num-kv-blocks", "128", *args, env={"KERNEL_CORE_CACHE": str(embedded_model_cache)})
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_sigterm_or_ctrl_c_lets_in_flight_requests_finish_then_exits(serve, sig: signal.Signals):
    server = serve("--shutdown-timeout", "60")
    connection, response = _stream(server.port, max_tokens=300)
    response.readline()  # running
    server.process.send_signal(sig)
    events = _events(response)
    assert events[-1] == "data: [DONE]"
    finished = json.loads(events[-2].removeprefix("data: "))
    assert finished["choices"][0]["finish_reason"] == "length"
    code = server.process.wait(30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    log = server.log.read_text()
    assert "Application shutdown complete" in log
    if sig == signal.SIGTERM:
        assert code == 0, log
    else:
        assert_stopped_by_ctrl_c(code, log, "serve")


def test_a_second_ctrl_c_cancels_in_flight_requests_stops_the_engine_and_exits_130(serve):
    server = serve("--shutdown-timeout", "60")
    connection, response = _stream(server.port, max_tokens=1000)
    response.readline()
    server.process.send_signal(signal.SIGINT)
    wait_until(lambda: "Waiting for connections to close" in server.log.read_text(), server.process,
               server.log.read_text)  # draining
    server.process.send_signal(signal.SIGINT)
    events = _events(response)
    code = server.process.wait(30)
    log = server.log.read_text()
    assert "data: [DONE]" not in events, log  # cut off, not drained
    assert_stopped_by_ctrl_c(code, log, "serve")
    assert "a request still running at shutdown was cancelled" in log  # one line, not a traceback
    assert "Application shutdown complete" in log  # the engine was stopped too


def test_ctrl_c_while_loading_exits_130_before_serving(serve):
    server = serve(wait=False)
    # torch mapped: kcore serve is importing or building the engine, seconds before uvicorn runs
    wait_until(lambda: "libtorch" in Path(f"/proc/{server.process.pid}/maps").read_text(), server.process,
               server.log.read_text)
    server.process.send_signal(signal.SIGINT)
    code = server.process.wait(60)
    log = server.log.read_text()
    assert_stopped_by_ctrl_c(code, log, "serve")
    assert "Started server process" not in log


def _wait(server, until, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while not until(health := server.health()):
        assert time.monotonic() < deadline, health
        time.sleep(0.02)
    return health


def test_sigterm_aborts_what_outlives_the_timeout_and_exits_0(serve):
    server = serve("--shutdown-timeout", "0.5", "--max-num-seqs", "1")
    connection, response = _stream(server.port, max_tokens=1000)
    response.readline()
    # a client that leaves while its request still waits for a slot aborts it there too
    first_tokens = metric(server.metrics(), "kcore_time_to_first_token_seconds_count")
    for stream in (True, False):
        queued = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = {"model": "m", "prompt": PROMPT, "max_tokens": 50, "stream": stream}
        queued.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        _wait(server, lambda h: h["num_waiting"] == 1)
        queued.close()
        assert _wait(server, lambda h: h["num_waiting"] == 0)["num_running"] == 1
    text = server.metrics()
    assert metric(text, "kcore_time_to_first_token_seconds_count") == first_tokens  # neither ever ran
    assert metric(text, "kcore_requests_total", '{finish_reason="abort"}') == 2
    started = time.monotonic()
    server.process.terminate()
    events = _events(response)
    assert server.process.wait(30) == 0
    assert time.monotonic() - started < 15
    assert not any('"finish_reason": "length"' in e or '"finish_reason":"length"' in e for e in events)
    log = server.log.read_text()
    assert "timeout graceful shutdown exceeded" in log
    assert "a request still running at shutdown was cancelled" in log
    assert "Traceback" not in log
