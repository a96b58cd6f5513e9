"""Entry point: registers trainable tokens by name and PEFT type, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the model-level hooks (the head tied to the embedding) and per-model default targets.
kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """Trainable tokens, written to ``adapter_config.json`` as PEFT's ``TRAINABLE_TOKENS``."""
    return [
        TunerSpec(
            name="trainable_tokens",
            description="Trainable tokens: chosen rows of the input embedding (and of a head tied to it) trained, the rest frozen.",
            implementation="kernel_core_trainable_tokens.tuner:TrainableTokensTuner",
            peft_type="TRAINABLE_TOKENS",
            capabilities=frozenset({"merge", "mixed-batch"}),
        )
    ]
