"""Entry point: registers FourierFT by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the per-module config channel (n_frequency_pattern) and per-architecture defaults.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """FourierFT, written to ``adapter_config.json`` as PEFT's ``FOURIERFT``."""
    return [
        TunerSpec(
            name="fourierft",
            description="FourierFT: a weight update from n learned spectral coefficients at random places, on Linear and Conv1D.",
            implementation="kernel_core_fourierft.tuner:FourierFTTuner",
            peft_type="FOURIERFT",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
