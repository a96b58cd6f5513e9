"""Entry point: registers VeRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the model-level hooks and state kept once per model (the shared projections).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """VeRA, written to ``adapter_config.json`` as PEFT's ``VERA``."""
    return [
        TunerSpec(
            name="vera",
            description="VeRA: frozen random projections shared by all layers, scaled by learned vectors, on Linear and Conv1D.",
            implementation="kernel_core_vera.tuner:VeraTuner",
            peft_type="VERA",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
