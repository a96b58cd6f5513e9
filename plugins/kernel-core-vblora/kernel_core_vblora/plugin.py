"""Entry point: registers VB-LoRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the model-level hooks, state kept once per model (the vector bank) and the file hooks.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """VB-LoRA, written to ``adapter_config.json`` as PEFT's ``VBLORA``."""
    return [
        TunerSpec(
            name="vblora",
            description="VB-LoRA: low-rank factors mixed from the top-k vectors of a bank shared by all layers, on Linear and Conv1D.",
            implementation="kernel_core_vblora.tuner:VBLoRATuner",
            peft_type="VBLORA",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
