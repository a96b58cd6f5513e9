"""What one client can make the server hold, on a real ``kcore serve``: body size (413) and body
arrival time (408), oversized headers, a stream read slower than it is produced (back-pressure:
the engine goes on and the client loses nothing), a stream never read at all, and requests over
the context (OpenAI's 400 ``context_length_exceeded``) or with text no tokenizer can encode."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_core.server.limits import MAX_HEADER_BYTES

from .conftest import API_KEY, Server, start_server

MAX_BYTES = 65536
READ_TIMEOUT = 2.0
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def limited(tiny_model: Path, embedded_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("limits") / "server.log"
    server = start_server(
        tiny_model, log, "--api-key", API_KEY, "--max-request-bytes", str(MAX_BYTES),
        "--request-read-timeout", str(READ_TIMEOUT), "--max-model-len", str(MAX_MODEL_LEN),
        "--num-kv-blocks", "128", env={"KERNEL_CORE_CACHE": str(embedded_model_cache)},
    )
    yield server
    assert server.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def _connect(server: Server, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    return sock


def _head(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\n{extra}").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _completion(server: Server, **fields) -> dict:
    return {"model": server.model, "prompt": "The capital of France is", "temperature": 0, **fields}


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(limited):
    sock = _connect(limited)
    sock.sendall(_head("/v1/completions", f"Content-Length: {MAX_BYTES + 1}\r\n\r\n") + b"{")
    status, body = _read_response(sock)
    sock.close()
    assert status == 413 and str(MAX_BYTES) in body["error"]["message"], body
    assert limited.health()["status"] == "ok"


def test_a_chunked_body_is_cut_off_once_past_the_limit(limited):
    sock = _connect(limited)
    sock.sendall(_head("/v1/completions", "Transfer-Encoding: chunked\r\n\r\n"))
    chunk = b" " * 8192
    try:
        for _ in range(MAX_BYTES // len(chunk) + 2):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while we were still sending
    status, body = _read_response(sock)
    sock.close()
    assert status == 413 and body["error"]["type"] == "invalid_request_error", body


def test_a_body_that_trickles_in_gets_408(limited):
    sock = _connect(limited)
    payload = json.dumps(_completion(limited, max_tokens=2)).encode()
    sock.sendall(_head("/v1/completions", f"Content-Length: {len(payload)}\r\n\r\n") + payload[:10])
    started = time.monotonic()
    status, body = _read_response(sock)  # the rest never comes
    waited = time.monotonic() - started
    sock.close()
    assert status == 408 and "did not arrive" in body["error"]["message"], body
    assert waited >= READ_TIMEOUT * 0.5  # it was the timeout that answered, not an early refusal


def test_oversized_headers_are_431_and_the_server_goes_on(limited):
    status, body = limited.request("GET", "/v1/models", headers={"X-Big": "a" * (MAX_HEADER_BYTES + 1)})
    assert status == 431 and str(MAX_HEADER_BYTES) in body["error"]["message"], body
    assert limited.request("GET", "/v1/models", headers={"X-Big": "a" * (MAX_HEADER_BYTES // 2)})[0] == 200


def test_max_tokens_beyond_the_context_is_openais_400(limited):
    status, body = limited.request("POST", "/v1/completions", _completion(limited, max_tokens=MAX_MODEL_LEN))
    assert status == 400, body
    error = body["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in error["message"]
    status, body = limited.request("POST", "/v1/chat/completions", {
        "model": limited.model, "messages": [{"role": "user", "content": "word " * 400}]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert body["error"]["param"] == "messages" and "in the messages" in body["error"]["message"]
    # what fits is served; chat without max_tokens gets what the context leaves
    status, body = limited.request("POST", "/v1/completions", _completion(limited, max_tokens=MAX_MODEL_LEN - 10))
    assert status == 200, body
    status, body = limited.request("POST", "/v1/chat/completions", {
        "model": limited.model, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True})
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert body["usage"]["total_tokens"] == MAX_MODEL_LEN


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "ok \ud800"}, "prompt"),
    ("/v1/completions", {"prompt": ["fine", "\udfff"]}, "prompt.1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud83d"}]}, "messages.0.content"),
    ("/v1/completions", {"prompt": "x", "stop": ["\udc00"]}, "stop.0"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
])
def test_lone_surrogates_are_400_naming_the_field(limited, path, body, param):
    status, answer = limited.request("POST", path, {"model": limited.model, **body})
    assert status == 400, answer
    assert answer["error"]["param"] == param and "surrogate" in answer["error"]["message"]


def _stream_request(server: Server, max_tokens: int) -> bytes:
    """An HTTP/1.0 request: the answer is not chunked, and the server closes the connection at its end."""
    payload = json.dumps(_completion(server, max_tokens=max_tokens, ignore_eos=True, stream=True, logprobs=20)).encode()
    return _head("/v1/completions", f"Content-Length: {len(payload)}\r\n\r\n", version="1.0") + payload


def _read_all(sock: socket.socket, size: int, pause: float = 0.0) -> bytes:
    """Everything until the server closes, ``size`` bytes a read, ``pause`` seconds between reads."""
    data = b""
    while chunk := sock.recv(size):
        data += chunk
        time.sleep(pause)
    return data


def _stream_text(raw: bytes) -> str:
    events = [line[6:] for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])


def test_a_slow_reader_gets_the_whole_stream_and_holds_nobody_up(limited):
    """A client reading a few bytes at a time: the engine finishes the request at its own pace
    (pool whole while the client is still reading), another request is served meanwhile, and
    the slow client's text equals the text read at full speed."""
    max_tokens = 200
    fast = _connect(limited)
    fast.sendall(_stream_request(limited, max_tokens))
    fast_raw = _read_all(fast, 65536)
    fast.close()

    slow = _connect(limited, receive_buffer=4096)
    slow.sendall(_stream_request(limited, max_tokens))
    slow_raw = slow.recv(256)
    deadline = time.monotonic() + 60
    while limited.health()["num_running"]:  # the engine is not held back by the slow reader
        assert time.monotonic() < deadline
        time.sleep(0.05)
    other = limited.request("POST", "/v1/completions", _completion(limited, max_tokens=4))
    assert other[0] == 200
    slow_raw += _read_all(slow, 512, pause=0.005)
    slow.close()
    assert _stream_text(slow_raw) == _stream_text(fast_raw)
    limited.wait_idle()


def test_a_stream_nobody_reads_still_frees_its_blocks(limited):
    sock = _connect(limited, receive_buffer=2048)
    sock.sendall(_stream_request(limited, 200))
    time.sleep(0.5)
    limited.wait_idle(timeout=60)  # finished in the engine although the client read nothing
    sock.close()
    assert limited.health()["status"] == "ok"


def test_an_idle_keep_alive_connection_is_closed(limited):
    sock = _connect(limited)
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode())
    status, _ = _read_response(sock)
    assert status == 200
    started = time.monotonic()
    assert sock.recv(1) == b""  # closed by the server (recv's own timeout is 30 s)
    assert time.monotonic() - started < 15
    sock.close()
