"""Entry point: registers LoHa by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the per-module config channel (rank_pattern/alpha_pattern) and DeltaWeightLayer.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """LoHa, written to ``adapter_config.json`` as PEFT's ``LOHA``."""
    return [
        TunerSpec(
            name="loha",
            description="LoHa: a Hadamard product of two low-rank updates, on Linear layers.",
            implementation="kernel_core_loha.tuner:LoHaTuner",
            peft_type="LOHA",
            capabilities=frozenset({"merge", "mixed-batch", "mixed-model"}),
        )
    ]
