"""Entry point: registers the priority policy by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import SchedulerPolicySpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_scheduler_policies() -> list[SchedulerPolicySpec]:
    """The priority policy, at priority 0: used when named, while fcfs stays the default."""
    return [
        SchedulerPolicySpec(
            name="priority",
            description="Per-request priority (lower is more urgent), first come first served within one.",
            implementation="kernel_core_sched_priority.policy:PriorityPolicy",
            priority=0,
        )
    ]
