"""Entry point: registers MiSS by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: DeltaWeightLayer and the per-module config channel (errors name the module).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """MiSS, written to ``adapter_config.json`` as PEFT's ``MISS`` (PEFT's Bone folded into it)."""
    return [
        TunerSpec(
            name="miss",
            description="MiSS: one learned block shared by every slice of each Linear weight (Bone's successor).",
            implementation="kernel_core_miss.tuner:MissTuner",
            peft_type="MISS",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
