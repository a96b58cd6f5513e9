"""First come, first served: the fairest order when requests carry no urgency of their own."""

from __future__ import annotations

from kernel_core.contracts.scheduler import SchedulableRequest, SchedulerPolicy


class FcfsPolicy(SchedulerPolicy):
    """Serves requests by arrival time; the request id breaks ties so the order is total.

    Preemption keeps the default: the last in this order, the latest arrival, gives way, so
    the oldest requests keep their blocks and finish first.
    """

    def sort_key(self, request: SchedulableRequest) -> tuple[float, str]:
        return (request.arrival_time, request.request_id)
