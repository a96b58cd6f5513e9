"""Per-request priority: urgent requests jump the queue, the rest keep their arrival order."""

from __future__ import annotations

from kernel_core.contracts.scheduler import SchedulableRequest, SchedulerPolicy


class PriorityPolicy(SchedulerPolicy):
    """Serves the lowest ``priority`` value first (as vLLM), first come first served within one.

    Preemption keeps the default, the last in this order: the least urgent request gives way,
    the latest arrival among equally urgent ones.
    """

    def sort_key(self, request: SchedulableRequest) -> tuple[int, float, str]:
        return (request.priority, request.arrival_time, request.request_id)
