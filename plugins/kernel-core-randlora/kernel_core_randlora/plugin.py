"""Entry point: registers RandLoRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the model-level hooks and state kept once per model (the shared bases).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """RandLoRA, written to ``adapter_config.json`` as PEFT's ``RANDLORA``."""
    return [
        TunerSpec(
            name="randlora",
            description="RandLoRA: full-rank updates from frozen random bases shared by all layers, scaled by learned matrices, on Linear and Conv1D.",
            implementation="kernel_core_randlora.tuner:RandLoraTuner",
            peft_type="RANDLORA",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
