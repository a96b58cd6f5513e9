"""The contract a scheduler policy plugin implements.

The engine's scheduler owns the mechanism (token budget, continuous batching, chunked prefill,
preemption by recompute); a policy decides only *who goes first* and *who is preempted*.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol


class SchedulableRequest(Protocol):
    """What a policy may read of a request; it must not change anything."""

    @property
    def request_id(self) -> str: ...

    @property
    def arrival_time(self) -> float: ...

    @property
    def priority(self) -> int:
        """Lower value is more urgent, as in vLLM."""
        ...

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def num_computed_tokens(self) -> int: ...


class SchedulerPolicy(ABC):
    """Orders requests. Must be a strict, deterministic total order, whatever the input order."""

    @abstractmethod
    def sort_key(self, request: SchedulableRequest) -> tuple[Any, ...]:
        """Key under which requests are served: the smallest key is scheduled first.

        Keys must differ for different requests (end with ``request_id`` to break ties).
        """

    def order(self, requests: Sequence[SchedulableRequest]) -> list[SchedulableRequest]:
        """Requests in the order they should be scheduled."""
        return sorted(requests, key=self.sort_key)

    def pick_victim(self, running: Sequence[SchedulableRequest]) -> SchedulableRequest:
        """The running request to preempt when KV blocks run out: by default the last in order."""
        if not running:
            raise ValueError("pick_victim needs at least one running request")
        return max(running, key=self.sort_key)
