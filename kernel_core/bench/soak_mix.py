"""The requests of ``kcore bench soak``: a seeded mix drawn job by job, each sent over HTTP and its
answer checked, an abort made by closing the socket.

The mix covers what a long-lived server meets: completions and chat, streamed and not, the base
model and several LoRA adapters (more than the server's adapter slots, so slots change hands),
``n`` > 1, a list of prompts, logprobs and top logprobs, stop strings, prompts of varied length
(sharing prefixes, so the prefix cache hits and evicts), sampled and greedy, and clients that leave
mid-stream or before any answer (while the request still waits in the queue, most of the time).

Every answer that comes back whole is checked against the request: one choice per prompt and
``n``, a known finish reason, no stop string in the text, one logprobs entry per generated token
when logprobs were asked for. A request is ``ok``, ``aborted`` (as the job planned: an expected
outcome, not a failure) or ``failed`` with an error class (``HTTP 500``, an exception type,
``timeout``, ``invalid answer``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from kernel_core.bench import http_client

#: Prompt pieces: a job's prompt is one to eight of them, so prompts share prefixes and vary in length.
PROMPTS = (
    "The capital of France is",
    " Write a short story about a lighthouse keeper who finds a message in a bottle.",
    " def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    " List three reasons why the sky is blue, one per line:",
    " Translate to French: The weather is nice today and we are going to the beach.",
    " Once upon a time, in a village at the edge of a great forest, there lived",
    " Q: What is 17 times 23?\nA:",
    " Summarise the plot of Hamlet in two sentences.",
)
STOPS = (".", "\n", " the", ",", "!")
#: Finish reasons of a whole answer (``abort`` is only for a client that left, which reads nothing).
FINISH_REASONS = ("stop", "length")
#: The mix's elements, as the report counts them: every one must be exercised in a run.
ELEMENTS = (
    "completion", "chat", "stream", "non-stream", "base model", "adapter", "n>1", "prompt list", "logprobs",
    "stop strings", "sampled", "abort mid-stream", "abort before answer",
)


@dataclass(frozen=True)
class Job:
    """One request of the mix and how its client behaves."""

    route: str  # "completions" or "chat"
    model: str
    adapter: bool
    prompts: tuple[str, ...]
    stream: bool
    n: int
    max_tokens: int
    logprobs: int | None
    stop: tuple[str, ...]
    temperature: float
    seed: int
    #: None, "mid-stream" (leave after ``abort_after`` token chunks) or "before answer" (leave after
    #: ``abort_after`` seconds without a byte of answer).
    abort: str | None = None
    abort_after: float = 0.0

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.route == "chat" else "/v1/completions"

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": self.max_tokens, "n": self.n, "temperature": self.temperature,
            "seed": self.seed, "stream": self.stream,
        }
        if self.route == "chat":
            body["messages"] = [{"role": "user", "content": self.prompts[0]}]
            if self.logprobs is not None:
                body.update(logprobs=True, top_logprobs=self.logprobs)
        else:
            body["prompt"] = self.prompts[0] if len(self.prompts) == 1 else list(self.prompts)
            if self.logprobs is not None:
                body["logprobs"] = self.logprobs
        if self.stop:
            body["stop"] = list(self.stop)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def elements(self) -> list[str]:
        """The mix elements this job exercises if it is served (aborts are counted when they happen)."""
        names = [
            "completion" if self.route == "completions" else "chat",
            "stream" if self.stream else "non-stream",
            "adapter" if self.adapter else "base model",
        ]
        for name, present in (("n>1", self.n > 1), ("prompt list", len(self.prompts) > 1),
                              ("logprobs", self.logprobs is not None), ("stop strings", bool(self.stop)),
                              ("sampled", self.temperature > 0)):
            if present:
                names.append(name)
        return names


def draw_job(rng: random.Random, base: str, adapters: list[str], max_tokens: int) -> Job:
    """The next job of the mix: a fixed sequence for a given ``rng`` seed."""
    route = rng.choice(("completions", "chat"))
    stream = rng.random() < 0.6
    adapter = bool(adapters) and rng.random() < 0.6
    count = 2 if route == "completions" and rng.random() < 0.15 else 1
    prompts = tuple("".join(rng.choices(PROMPTS, k=rng.randint(1, 8))).strip() for _ in range(count))
    abort, abort_after = None, 0.0
    if stream and rng.random() < 0.12:
        abort, abort_after = "mid-stream", float(rng.randint(1, 3))
    elif rng.random() < 0.08:
        abort, abort_after = "before answer", rng.uniform(0.0, 0.05)
    return Job(
        route=route,
        model=rng.choice(adapters) if adapter else base,
        adapter=adapter,
        prompts=prompts,
        stream=stream,
        n=rng.choices((1, 2, 3), weights=(7, 2, 1))[0],
        max_tokens=rng.randint(1, max_tokens),
        logprobs=rng.randint(0 if route == "completions" else 1, 3) if rng.random() < 0.3 else None,
        stop=tuple(rng.sample(STOPS, rng.randint(1, 2))) if rng.random() < 0.3 else (),
        temperature=rng.choice((0.0, 0.8)),
        seed=rng.randrange(2**31),
        abort=abort,
        abort_after=abort_after,
    )


@dataclass
class Outcome:
    """What became of one job."""

    job: Job
    status: str = "ok"  # "ok", "aborted" or "failed"
    #: For a failure: its class (``HTTP 503``, ``TimeoutError``, ``invalid answer``, ...) and what happened.
    error_class: str | None = None
    detail: str = ""
    completion_tokens: int = 0
    #: Seconds from sending to the first token chunk (streams) and to the whole answer.
    ttft: float | None = None
    e2e: float | None = None

    def fail(self, error_class: str, detail: str) -> Outcome:
        self.status, self.error_class, self.detail = "failed", error_class, detail[:300]
        return self


@dataclass
class _Answer:
    """A whole answer, gathered from one JSON body or from a stream's chunks."""

    text: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    logprob_entries: dict[int, int] = field(default_factory=dict)
    completion_tokens: int | None = None

    def add_choice(self, route: str, choice: dict[str, Any], stream: bool) -> None:
        index = choice["index"]
        if route == "chat":
            text = (choice.get("delta") or {}).get("content") if stream else choice["message"].get("content")
        else:
            text = choice.get("text")
        self.text[index] = self.text.get(index, "") + (text or "")
        if choice.get("finish_reason") is not None or index not in self.finish:
            self.finish[index] = choice.get("finish_reason")
        if (logprobs := choice.get("logprobs")) is not None:
            entries = logprobs.get("content") if route == "chat" else logprobs.get("tokens")
            self.logprob_entries[index] = self.logprob_entries.get(index, 0) + len(entries or [])


async def run_job(port: int, job: Job, timeout: float) -> Outcome:
    """Send ``job``, read or abandon its answer as planned, check it; never raises."""
    outcome = Outcome(job)
    sent = time.perf_counter()
    try:
        await asyncio.wait_for(_exchange(port, job, outcome, sent), timeout)
    except asyncio.TimeoutError:
        outcome.fail("timeout", f"no whole answer within {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - any broken exchange is a failure of this request, classed by type
        outcome.fail(type(exc).__name__, str(exc))
    return outcome


async def _exchange(port: int, job: Job, outcome: Outcome, sent: float) -> None:
    accept = "text/event-stream" if job.stream else "application/json"
    reader, writer = await http_client.send(port, "POST", job.path, json.dumps(job.body()).encode(), accept=accept)
    try:
        if job.abort == "before answer":
            try:
                status, headers = await asyncio.wait_for(http_client.read_head(reader), job.abort_after)
            except asyncio.TimeoutError:
                outcome.status = "aborted"  # closing the socket below is the abort
                return
        else:
            status, headers = await http_client.read_head(reader)
        if status != 200:
            body = await http_client.read_all(reader, headers)
            outcome.fail(f"HTTP {status}", body.decode(errors="replace"))
            return
        answer = _Answer()
        if job.stream:
            if not await _read_stream(reader, headers, job, answer, outcome, sent):
                return
        else:
            payload = json.loads(await http_client.read_all(reader, headers))
            for choice in payload["choices"]:
                answer.add_choice(job.route, choice, stream=False)
            answer.completion_tokens = payload["usage"]["completion_tokens"]
        outcome.e2e = time.perf_counter() - sent
        if problem := check_answer(job, answer):
            outcome.fail("invalid answer", problem)
        else:
            outcome.completion_tokens = answer.completion_tokens or 0
    finally:
        writer.close()


async def _read_stream(
    reader: asyncio.StreamReader, headers: dict[str, str], job: Job, answer: _Answer, outcome: Outcome, sent: float
) -> bool:
    """Gather a stream into ``answer``; False when it ended otherwise than whole (aborted or failed)."""
    token_chunks = 0
    async for data in http_client.events(reader, headers):
        if data == "[DONE]":
            return True
        chunk = json.loads(data)
        if "error" in chunk:
            outcome.fail("error event", json.dumps(chunk["error"]))
            return False
        if chunk.get("usage"):
            answer.completion_tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            answer.add_choice(job.route, choice, stream=True)
        if any(_carries_tokens(job.route, c) for c in chunk.get("choices") or []):
            token_chunks += 1
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - sent
            if job.abort == "mid-stream" and token_chunks >= job.abort_after:
                outcome.status = "aborted"  # the caller closes the socket
                return False
    outcome.fail("truncated stream", "the stream ended without data: [DONE]")
    return False


def _carries_tokens(route: str, choice: dict[str, Any]) -> bool:
    text = (choice.get("delta") or {}).get("content") if route == "chat" else choice.get("text")
    return bool(text) or choice.get("logprobs") is not None


def check_answer(job: Job, answer: _Answer) -> str | None:
    """What is wrong with a whole answer to ``job``, or None."""
    if sorted(answer.text) != list(range(job.choices)):
        return f"choices {sorted(answer.text)}, wanted indices 0..{job.choices - 1}"
    if answer.completion_tokens is None:
        return "no usage"
    if not 0 <= answer.completion_tokens <= job.choices * job.max_tokens:
        return f"{answer.completion_tokens} completion tokens for {job.choices} choices of max_tokens {job.max_tokens}"
    if bad := {i: r for i, r in answer.finish.items() if r not in FINISH_REASONS}:
        return f"finish reasons {bad}"
    if leaked := [(i, s) for i, text in answer.text.items() for s in job.stop if s in text]:
        return f"stop string in the text: {leaked[0]}"
    if job.logprobs is not None and sum(answer.logprob_entries.values()) != answer.completion_tokens:
        return f"{sum(answer.logprob_entries.values())} logprobs entries for {answer.completion_tokens} tokens"
    return None
