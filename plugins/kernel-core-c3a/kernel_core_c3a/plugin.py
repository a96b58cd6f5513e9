"""Entry point: registers C3A by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: DeltaWeightLayer and the per-module config channel (block_size_pattern).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """C3A, written to ``adapter_config.json`` as PEFT's ``C3A``."""
    return [
        TunerSpec(
            name="c3a",
            description="C3A: a weight update of block circular convolutions (computed with FFTs), on Linear.",
            implementation="kernel_core_c3a.tuner:C3ATuner",
            peft_type="C3A",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
