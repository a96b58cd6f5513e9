"""What the engine hands back per request, shaped like vLLM's outputs so its users feel at home.

Plain slotted dataclasses: one is built or updated per request per step, on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Why a completion ended; ``None`` on a ``CompletionOutput`` while it is still running.
FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(slots=True)
class Logprob:
    """Log-probability of one token at one position, and its rank among all tokens (1 = best)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


#: One ``{token_id: Logprob}`` per position: the chosen token plus the top-N alternatives.
PositionLogprobs = dict[int, Logprob]


@dataclass(slots=True)
class CompletionOutput:
    """One of the ``n`` completions of a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    #: The stop string or stop token id that ended it; ``None`` for EOS, length, abort, error.
    stop_reason: str | int | None = None
    logprobs: list[PositionLogprobs] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """Wall-clock times (``time.time()`` seconds) of a request's milestones; ``None`` until reached."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass(slots=True)
class RequestOutput:
    """A request's state as of the latest step: its prompt and every completion so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    #: One entry per prompt token; the first is ``None`` (nothing precedes it to predict it).
    prompt_logprobs: list[PositionLogprobs | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
