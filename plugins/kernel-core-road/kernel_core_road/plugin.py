"""Entry point: registers RoAd by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the config mixins (RoAd has modules_to_save only) and the per-module config channel.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """RoAd, written to ``adapter_config.json`` as PEFT's ``ROAD``."""
    return [
        TunerSpec(
            name="road",
            description="RoAd: learned 2D rotations and scales of pairs of each Linear layer's outputs.",
            implementation="kernel_core_road.tuner:RoadTuner",
            peft_type="ROAD",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
