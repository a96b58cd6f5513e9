"""Entry point: registers prefix tuning by name and PEFT type, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the prompt-learning kinds (kernel_core.contracts.prompt) and the input hooks;
#: 1.5: served through kernel_core.contracts.prompt_serving (virtual tokens in the engine).
kernel_core_api = "1.5"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """Prefix tuning, written to ``adapter_config.json`` as PEFT's ``PREFIX_TUNING``."""
    return [
        TunerSpec(
            name="prefix-tuning",
            description="Prefix tuning: learned keys and values before every layer's (with or without a projection MLP).",
            implementation="kernel_core_prefix_tuning.tuner:PrefixTuningTuner",
            serving="kernel_core.contracts.prompt_serving:PastKeyValuesServing",
            peft_type="PREFIX_TUNING",
        )
    ]
