"""Entry point: registers LoRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """LoRA, written to ``adapter_config.json`` as PEFT's ``LORA``, and served by :mod:`kernel_core_lora.serving`."""
    return [
        TunerSpec(
            name="lora",
            description="Low-rank adapters (LoRA, rsLoRA, DoRA; PiSSA/OLoRA inits) on Linear, Embedding, Conv1D.",
            implementation="kernel_core_lora.tuner:LoraTuner",
            peft_type="LORA",
            serving="kernel_core_lora.serving:LoraServing",
            capabilities=frozenset({"merge", "mixed-batch", "weighted-combination", "mixed-model"}),
        )
    ]
