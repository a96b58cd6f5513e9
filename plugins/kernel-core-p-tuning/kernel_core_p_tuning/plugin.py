"""Entry point: registers P-tuning by name and PEFT type, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the prompt-learning kinds (kernel_core.contracts.prompt) and the input hooks;
#: 1.5: served through kernel_core.contracts.prompt_serving (virtual tokens in the engine).
kernel_core_api = "1.5"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """P-tuning, written to ``adapter_config.json`` as PEFT's ``P_TUNING``."""
    return [
        TunerSpec(
            name="p-tuning",
            description="P-tuning: virtual-token embeddings computed by a trained MLP or LSTM encoder.",
            implementation="kernel_core_p_tuning.tuner:PTuningTuner",
            serving="kernel_core.contracts.prompt_serving:VirtualTokensServing",
            peft_type="P_TUNING",
        )
    ]
