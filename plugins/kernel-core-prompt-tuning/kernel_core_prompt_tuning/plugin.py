"""Entry point: registers prompt tuning by name and PEFT type, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import TunerSpec

#: 1.4: the prompt-learning kinds (kernel_core.contracts.prompt) and the input hooks;
#: 1.5: served through kernel_core.contracts.prompt_serving (virtual tokens in the engine).
kernel_core_api = "1.5"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    """Prompt tuning, written to ``adapter_config.json`` as PEFT's ``PROMPT_TUNING``."""
    return [
        TunerSpec(
            name="prompt-tuning",
            description="Prompt tuning: learned virtual-token embeddings before the input (random, vocabulary or text init).",
            implementation="kernel_core_prompt_tuning.tuner:PromptTuningTuner",
            serving="kernel_core.contracts.prompt_serving:VirtualTokensServing",
            peft_type="PROMPT_TUNING",
        )
    ]
