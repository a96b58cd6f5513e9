"""Records passed to engine lifecycle observers (metrics, logging, tracing plugins).

Frozen dataclasses rather than pydantic models: the engine emits them on its hot path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestAdded:
    """A request entered the engine's waiting queue."""

    request_id: str
    num_prompt_tokens: int
    adapter: str | None
    arrival_time: float


@dataclass(frozen=True)
class RequestFinished:
    """A request left the engine, by any exit path; ``error`` is set when it failed."""

    request_id: str
    finish_reason: str
    num_prompt_tokens: int
    num_output_tokens: int
    adapter: str | None
    arrival_time: float
    first_token_time: float | None
    finish_time: float
    error: str | None = None


@dataclass(frozen=True)
class StepDone:
    """One engine step completed."""

    step: int
    num_running: int
    num_waiting: int
    num_scheduled_tokens: int
    num_preempted: int
    kv_cache_usage: float
    duration_s: float
