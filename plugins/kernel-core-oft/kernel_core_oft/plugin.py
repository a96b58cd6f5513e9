"""Entry point: registers OFT by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: adapter_input (OFT rotates the base layer's input) and the per-module config channel.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """OFT, written to ``adapter_config.json`` as PEFT's ``OFT``."""
    return [
        TunerSpec(
            name="oft",
            description="Orthogonal finetuning: a learned block-diagonal rotation of each Linear layer's input.",
            implementation="kernel_core_oft.tuner:OFTTuner",
            peft_type="OFT",
            capabilities=frozenset({"merge", "mixed-batch", "mixed-model"}),
        )
    ]
