"""Entry point: registers SHiRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: DeltaWeightLayer and BufferDict (the entries, saved per layer).
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """SHiRA, written to ``adapter_config.json`` as PEFT's ``SHIRA``."""
    return [
        TunerSpec(
            name="shira",
            description="SHiRA: a sparse high-rank update training r (in + out) randomly chosen entries of each weight, on Linear.",
            implementation="kernel_core_shira.tuner:ShiraTuner",
            peft_type="SHIRA",
            capabilities=frozenset({"merge", "mixed-batch", "mixed-model"}),
        )
    ]
