"""Entry point: registers LoKr by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the per-module config channel (rank_pattern/alpha_pattern) and DeltaWeightLayer.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """LoKr, written to ``adapter_config.json`` as PEFT's ``LOKR``."""
    return [
        TunerSpec(
            name="lokr",
            description="LoKr: a Kronecker product of two (optionally low-rank) factors, on Linear layers.",
            implementation="kernel_core_lokr.tuner:LoKrTuner",
            peft_type="LOKR",
            capabilities=frozenset({"merge", "mixed-batch", "mixed-model"}),
        )
    ]
