"""Entry point: registers LayerNorm tuning by name and PEFT type, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: per-architecture defaults (default_target_modules).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """LayerNorm tuning, written to ``adapter_config.json`` as PEFT's ``LN_TUNING``."""
    return [
        TunerSpec(
            name="ln_tuning",
            description="LayerNorm tuning: a trainable copy of each targeted (norm) layer per adapter.",
            implementation="kernel_core_ln_tuning.tuner:LNTuningTuner",
            peft_type="LN_TUNING",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
