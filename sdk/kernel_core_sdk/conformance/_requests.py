"""Fake requests for scheduler policies: every field a policy may read, nothing else."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class FakeRequest:
    """A read-only object satisfying :class:`~kernel_core.contracts.scheduler.SchedulableRequest`."""

    request_id: str
    arrival_time: float
    priority: int
    num_prompt_tokens: int
    num_computed_tokens: int


def request_population(seed: int, size: int = 40) -> list[FakeRequest]:
    """Requests that stress tie-breaking: shared arrival times, priorities and prompt lengths,
    and pairs that differ only in their id."""
    rng = random.Random(seed)
    requests = []
    for i in range(size):
        prompt = rng.choice([1, 7, 7, 64, 300])
        requests.append(
            FakeRequest(
                request_id=f"req-{rng.randrange(10**6):06d}-{i}",
                arrival_time=rng.choice([0.0, 1.5, 1.5, 2.25]) + rng.choice([0.0, 0.0, 1e-3]),
                priority=rng.choice([-1, 0, 0, 3]),
                num_prompt_tokens=prompt,
                num_computed_tokens=rng.randint(0, prompt),
            )
        )
    requests.append(replace(requests[0], request_id=requests[0].request_id + "-twin"))
    return requests
