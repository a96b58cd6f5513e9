"""A real ``kcore serve`` process on 127.0.0.1 (a free port) over the tiny model, and helpers to
talk to it: the official ``openai`` client, raw HTTP for what the client hides (status lines,
SSE bytes, a connection dropped mid-stream)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..cli.kcore_process import KCORE

API_KEY = "test-key-0123456789"
READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
#: Adapters made with peft for the tiny model (see tests/lora/peft_adapters.py).
ADAPTER_SPECS = {
    "qv8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all16": dict(r=16, lora_alpha=32, target_modules="all-linear"),
}


@dataclass
class Server:
    """One ``kcore serve`` process; ``log`` holds its stdout and stderr."""

    process: subprocess.Popen
    log: Path
    port: int = 0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=kwargs.pop("api_key", API_KEY), max_retries=0,
                      timeout=120, **kwargs)

    def async_client(self, **kwargs: Any):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=kwargs.pop("api_key", API_KEY), max_retries=0,
                           timeout=300, **kwargs)

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = API_KEY,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Status and parsed JSON (text when not JSON) of one request."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        raw = response.read().decode()
        connection.close()
        try:
            return response.status, json.loads(raw)
        except json.JSONDecodeError:
            return response.status, raw

    def health(self) -> dict[str, Any]:
        status, body = self.request("GET", "/health", key=None)
        assert status == 200, body
        return body

    def metrics(self) -> str:
        status, body = self.request("GET", "/metrics", key=None)
        assert status == 200
        return body

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until no request runs or waits and every KV block is free again; the last health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            idle = health["num_running"] == 0 and health["num_waiting"] == 0
            if idle and health["num_free_blocks"] == health["num_blocks"]:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not become idle with a full pool: {health}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def spawn_server(model: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start ``kcore serve`` on a free port, without waiting: it loads the model first."""
    command = [*KCORE, "serve", "--model", str(model), "--port", "0", "--log-level", "info", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    handle.close()
    return Server(process, log, model=str(model))


def start_server(model: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 180.0) -> Server:
    """Start ``kcore serve`` on a free port and wait until it accepts requests."""
    server = spawn_server(model, log, *args, env=env)
    process = server.process
    deadline = time.monotonic() + timeout
    while True:
        match = READY.search(log.read_text())
        if match:
            server.port = int(match.group(1))
            return server
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"kcore serve did not start (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(0.1)


@contextmanager
def serving_adapters(model: Path, folders: dict[str, Path], log: Path, cache: Path) -> Iterator[Server]:
    """``kcore serve`` (64 KV blocks, ``KERNEL_CORE_CACHE`` at ``cache``) with each of ``folders`` given
    as ``--adapter name=folder``, checked to list each as an OpenAI model of ``model``; stopped
    cleanly after."""
    args = [arg for name, folder in folders.items() for arg in ("--adapter", f"{name}={folder}")]
    server = start_server(model, log, "--api-key", API_KEY, *args, "--num-kv-blocks", "64",
                          env={"KERNEL_CORE_CACHE": str(cache)})
    try:
        models = {m.id: m for m in server.client().models.list().data}
        assert {name: models[name].model_extra["parent"] for name in folders} == dict.fromkeys(folders, server.model)
        yield server
    finally:
        assert server.stop() == 0, server.log.read_text()


@pytest.fixture(scope="session")
def adapter_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of peft-made adapters for the tiny model (the server's ``--adapter-dir``)."""
    from ..lora.peft_adapters import make_adapter

    root = tmp_path_factory.mktemp("served-adapters")
    for seed, (name, spec) in enumerate(ADAPTER_SPECS.items(), 1):
        make_adapter(tiny_model, root / name, seed, **spec)
    return root


@pytest.fixture(scope="module")
def server(tiny_model: Path, adapter_dir: Path, embedded_model_cache: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an API key, adapter ``qv8`` loaded at start and ``--adapter-dir`` set, a
    small KV pool (so leaks show), and the module's tests sharing it."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = start_server(
        tiny_model, log, "--api-key", API_KEY, "--adapter", f"qv8={adapter_dir / 'qv8'}",
        "--adapter-dir", str(adapter_dir), "--max-lora-rank", "16", "--num-kv-blocks", "128",
        env={"KERNEL_CORE_CACHE": str(embedded_model_cache)},
    )
    yield server
    code = server.stop()
    assert code == 0, server.log.read_text()
