"""Entry point: registers the fcfs policy by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import SchedulerPolicySpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_scheduler_policies() -> list[SchedulerPolicySpec]:
    """The fcfs policy, at priority 10 so that it is the default when no policy is named."""
    return [
        SchedulerPolicySpec(
            name="fcfs",
            description="First come, first served; the latest arrival is preempted first.",
            implementation="kernel_core_sched_fcfs.policy:FcfsPolicy",
            priority=10,
        )
    ]
