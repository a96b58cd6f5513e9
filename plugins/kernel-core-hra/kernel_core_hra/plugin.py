"""Entry point: registers HRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the config mixins and the per-module config channel.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """HRA, written to ``adapter_config.json`` as PEFT's ``HRA``."""
    return [
        TunerSpec(
            name="hra",
            description="Householder reflection adaptation: the weight of each Linear/Conv2d times a product of learned reflections.",
            implementation="kernel_core_hra.tuner:HRATuner",
            peft_type="HRA",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
