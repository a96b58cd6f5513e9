"""Contracts between the core and its plugins: typed records and the base classes they implement.

Only :mod:`records` and :mod:`events` are imported here, because discovery needs them and they
import no torch; import the base classes from their own modules.
"""

from kernel_core.contracts.events import RequestAdded, RequestFinished, StepDone
from kernel_core.contracts.records import (
    SPEC_BY_KIND,
    AttentionBackendSpec,
    CacheManagerSpec,
    ExecutorSpec,
    ImplementationSpec,
    LoRAKernelSpec,
    ModelArchitectureSpec,
    MoEKernelSpec,
    PlatformSpec,
    PluginKind,
    SchedulerPolicySpec,
    TunerSpec,
)

__all__ = [
    "SPEC_BY_KIND",
    "AttentionBackendSpec",
    "CacheManagerSpec",
    "ExecutorSpec",
    "ImplementationSpec",
    "LoRAKernelSpec",
    "ModelArchitectureSpec",
    "MoEKernelSpec",
    "PlatformSpec",
    "PluginKind",
    "RequestAdded",
    "RequestFinished",
    "SchedulerPolicySpec",
    "StepDone",
    "TunerSpec",
]
