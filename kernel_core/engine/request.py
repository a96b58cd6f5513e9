"""A request's lifecycle: an explicit state machine where an invalid transition raises."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kernel_core.errors import KernelCoreError


class RequestStatus(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished-stopped"
    FINISHED_LENGTH = "finished-length"
    FINISHED_ABORTED = "finished-aborted"
    FINISHED_ERROR = "finished-error"

    @property
    def finished(self) -> bool:
        return self.value.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI/vLLM ``finish_reason`` of a finished status."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}
_FINISHED = frozenset(_FINISH_REASONS)
_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.WAITING: frozenset({RequestStatus.RUNNING}) | _FINISHED,
    RequestStatus.RUNNING: frozenset({RequestStatus.PREEMPTED}) | _FINISHED,
    RequestStatus.PREEMPTED: frozenset({RequestStatus.RUNNING}) | _FINISHED,
    **{status: frozenset() for status in _FINISHED},
}


#: The token id at an adapter's virtual-token positions: never embedded as itself (the adapter's
#: hooks replace its embedding or its keys and values), it only keys the prefix cache with the
#: adapter's load key.
VIRTUAL_TOKEN_ID = 0


class InvalidTransitionError(KernelCoreError, RuntimeError):
    """A request was moved between states in a way the lifecycle forbids (an engine bug)."""


@dataclass(eq=False)
class Request:
    """What the scheduler tracks of one sequence: its tokens and how many have KV computed."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float
    priority: int = 0
    adapter: str | None = None
    #: The loaded adapter's unique key: the prefix cache's ``extra_key``, so blocks are shared
    #: only between requests of the same adapter load (None for the base model).
    adapter_key: int | None = None
    deadline: float | None = None
    #: Compute every prompt token even when cached (prompt logprobs need their logits).
    skip_prefix_cache: bool = False
    #: The adapter's virtual tokens: the first ``num_virtual_tokens`` of ``prompt_token_ids``
    #: are :data:`VIRTUAL_TOKEN_ID` placeholders at positions ``0 .. V - 1``; the user's prompt
    #: follows. The scheduler, KV cache and runner count them as prompt tokens.
    num_virtual_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    error: str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens ``start:end`` of prompt + output, without concatenating the whole sequence."""
        prompt, split = self.prompt_token_ids, len(self.prompt_token_ids)
        if end <= split:
            return prompt[start:end]
        if start >= split:
            return self.output_token_ids[start - split : end - split]
        return prompt[start:] + self.output_token_ids[: end - split]

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def transition(self, to: RequestStatus) -> None:
        """Move to ``to``; raises :class:`InvalidTransitionError` when the lifecycle forbids it."""
        if to not in _TRANSITIONS[self.status]:
            raise InvalidTransitionError(
                f"request {self.request_id!r} cannot go from {self.status.value} to {to.value}"
            )
        self.status = to
