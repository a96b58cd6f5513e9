"""Entry point: registers AdaLoRA by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the per-module config channel (rank_pattern), per-architecture defaults, after_inject,
#: the training hooks and adapter_file_tensors.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """AdaLoRA, written to ``adapter_config.json`` as PEFT's ``ADALORA``."""
    return [
        TunerSpec(
            name="adalora",
            description="AdaLoRA: SVD-form LoRA whose ranks are pruned by importance during training, on Linear and Conv1D.",
            implementation="kernel_core_adalora.tuner:AdaLoraTuner",
            peft_type="ADALORA",
            capabilities=frozenset({"merge", "mixed-batch", "mixed-model"}),
        )
    ]
