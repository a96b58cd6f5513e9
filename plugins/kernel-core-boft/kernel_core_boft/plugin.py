"""Entry point: registers BOFT by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: adapter_input (BOFT rotates the base layer's input) and the per-module config channel.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """BOFT, written to ``adapter_config.json`` as PEFT's ``BOFT``."""
    return [
        TunerSpec(
            name="boft",
            description="Butterfly orthogonal finetuning: a product of permuted block rotations of each Linear layer's input.",
            implementation="kernel_core_boft.tuner:BOFTTuner",
            peft_type="BOFT",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
