"""Entry point: registers IA3 by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: adapter_input, the per-module config channel, per-architecture defaults, before_inject;
#: 1.5: its serving scales the projections the model offers as adapter targets.
kernel_core_api = "1.5"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """IA3, written to ``adapter_config.json`` as PEFT's ``IA3``, and served by :mod:`kernel_core_ia3.serving`."""
    return [
        TunerSpec(
            name="ia3",
            description="(IA)^3: learned scales on feed-forward inputs and other outputs, on Linear and Conv1D.",
            implementation="kernel_core_ia3.tuner:IA3Tuner",
            peft_type="IA3",
            serving="kernel_core_ia3.serving:IA3Serving",
            capabilities=frozenset({"merge", "mixed-batch", "weighted-combination"}),
        )
    ]
