"""A bounded load test on loopback: 200 concurrent streaming requests across the base model and
two adapters, completions and chat, a quarter of them dropped mid-stream by their clients.

Every request that is not dropped must stream exactly the text it gets when run alone (greedy),
the KV pool must be whole again afterwards (no leaked blocks), ``/health`` must answer 200
throughout, and the server's resident memory must come back within :data:`MEMORY_MARGIN` of
its level after a warm-up round of the same load (the first round grows allocator pools, the
tokenizer's caches and the metrics' label sets once).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from .conftest import API_KEY, metric, start_server

CONCURRENCY = 200
MAX_TOKENS = 24
MEMORY_MARGIN = 64 * 2**20  # bytes
PROMPTS = [
    "The capital of France is",
    "Hello, my name is",
    "def add(a, b):",
    "Once upon a time there was",
    "The three primary colours are",
    "In 1969, the first person to walk on the moon",
    "To make a cup of tea, first",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def loaded_server(tiny_model: Path, adapter_dir: Path, embedded_model_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("load") / "server.log"
    server = start_server(
        tiny_model, log, "--api-key", API_KEY, "--adapter", f"qv8={adapter_dir / 'qv8'}",
        "--adapter", f"all16={adapter_dir / 'all16'}", "--max-lora-rank", "16", "--num-kv-blocks", "256",
        "--max-num-seqs", "64", env={"KERNEL_CORE_CACHE": str(embedded_model_cache)},
    )
    yield server
    assert server.stop() == 0, log.read_text()


def _job(server, i: int) -> tuple[str, str, str]:
    models = (server.model, "qv8", "all16")
    return ("chat" if i % 2 else "completion", models[i // 2 % 3], PROMPTS[i // 6 % len(PROMPTS)])


async def _run(client, kind: str, model: str, prompt: str, drop_after: int | None) -> tuple[str, str | None]:
    """Stream one request; the text and its finish reason, or (partial text, None) if dropped."""
    common = dict(model=model, temperature=0, max_tokens=MAX_TOKENS, stream=True, extra_body={"ignore_eos": True})
    if kind == "chat":
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        stream = await client.completions.create(prompt=prompt, **common)
    text, reason, chunks = "", None, 0
    async for chunk in stream:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if kind == "chat" else choice.text
            reason = choice.finish_reason or reason
        chunks += 1
        if drop_after is not None and chunks >= drop_after:
            await stream.close()  # the client leaves mid-stream
            return text, None
    return text, reason


def _round(server, alone: dict | None) -> tuple[dict, int, list[int]]:
    """One round of :data:`CONCURRENCY` requests (a quarter dropped); returns the finished texts
    by job, how many were dropped, and the /health statuses polled meanwhile."""
    statuses: list[int] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            statuses.append(server.request("GET", "/health", key=None)[0])
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()

    async def main():
        client = server.async_client()
        jobs = [_job(server, i) for i in range(CONCURRENCY)]
        drops = [2 + i % 5 if i % 4 == 0 else None for i in range(CONCURRENCY)]
        try:
            return jobs, drops, await asyncio.gather(*(_run(client, *job, drop) for job, drop in zip(jobs, drops)))
        finally:
            await client.close()

    try:
        jobs, drops, results = asyncio.run(main())
    finally:
        done.set()
        poller.join()
    finished = {}
    for job, drop, (text, reason) in zip(jobs, drops, results):
        if drop is None:
            assert reason == "length", (job, reason)
            if alone is not None:
                assert text == alone[job], job
            finished[job] = text
    return finished, sum(d is not None for d in drops), statuses


def test_200_concurrent_streams_a_quarter_dropped(loaded_server):
    server = loaded_server
    client = server.client()
    alone = {}
    for job in {_job(server, i) for i in range(CONCURRENCY)}:
        kind, model, prompt = job
        if kind == "chat":
            out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                 temperature=0, max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})
            alone[job] = out.choices[0].message.content
        else:
            out = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS,
                                            extra_body={"ignore_eos": True})
            alone[job] = out.choices[0].text
    assert len(set(alone.values())) > len(alone) // 2  # base and adapters really differ

    _round(server, alone)  # warm-up: the same load once
    server.wait_idle()
    memory_before = metric(server.metrics(), "kcore_process_resident_memory_bytes")
    aborts_before = metric(server.metrics(), "kcore_requests_total", '{finish_reason="abort"}')

    started = time.monotonic()
    finished, dropped, statuses = _round(server, alone)
    elapsed = time.monotonic() - started
    assert len(finished) == len({_job(server, i) for i in range(CONCURRENCY) if i % 4})
    assert statuses and set(statuses) == {200}

    health = server.wait_idle()  # every block back in the pool
    assert health["num_free_blocks"] == health["num_blocks"] == 256
    text = server.metrics()
    aborted = metric(text, "kcore_requests_total", '{finish_reason="abort"}') - aborts_before
    assert 0 < aborted <= dropped
    memory_after = metric(text, "kcore_process_resident_memory_bytes")
    assert memory_after - memory_before < MEMORY_MARGIN, (memory_before, memory_after)
    print(f"\n{CONCURRENCY} streams in {elapsed:.1f} s; {dropped} dropped ({aborted:g} aborted in the engine); "
          f"RSS {memory_before / 2**20:.0f} -> {memory_after / 2**20:.0f} MiB")
