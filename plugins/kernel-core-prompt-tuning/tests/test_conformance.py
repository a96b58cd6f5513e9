"""The SDK's prompt-learning suite on prompt tuning (random and text init), and each init as PEFT
draws or builds it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch

from kernel_core.peft import get_config, get_peft_model
from kernel_core_prompt_tuning import plugin
from kernel_core_prompt_tuning.config import PromptTuningConfig
from kernel_core_prompt_tuning.tuner import PromptTuningTuner
from kernel_core_sdk.conformance import PromptLearningConformance
from kernel_core_sdk.peft_oracle import quiet
from kernel_core_sdk.tiny_models import tiny_llama

TEXT = "w5 w17 w42 w8 w0"


class TestPromptTuningConformance(PromptLearningConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture(params=["RANDOM", "TEXT"])
    def tuner_config(self, request: pytest.FixtureRequest, tokenizer_folder: Path) -> PromptTuningConfig:
        if request.param == "TEXT":
            return PromptTuningConfig(num_virtual_tokens=7, prompt_tuning_init="TEXT", prompt_tuning_init_text=TEXT,
                                      tokenizer_name_or_path=str(tokenizer_folder))
        return PromptTuningConfig(num_virtual_tokens=4)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("prompt-tuning", "PROMPT_TUNING")
    assert spec.load() is PromptTuningTuner


@pytest.mark.parametrize("init", ["RANDOM", "SAMPLE_VOCAB", "TEXT"])
def test_each_init_is_peft_s_for_the_same_seed(init: str, tokenizer_folder: Path) -> None:
    """RANDOM draws the table, SAMPLE_VOCAB draws vocabulary ids, TEXT repeats the text's token
    embeddings to 7 tokens (float32), all as PEFT does."""
    fields = {"num_virtual_tokens": 7, "prompt_tuning_init": init}
    if init == "TEXT":
        fields |= {"prompt_tuning_init_text": TEXT, "tokenizer_name_or_path": str(tokenizer_folder)}
    torch.manual_seed(11)
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM", **fields)))
    torch.manual_seed(11)
    ours = get_peft_model(tiny_llama(), get_config("prompt-tuning", **fields))
    expected = reference.prompt_encoder["default"].embedding.weight
    assert torch.equal(ours.base_model.prompt_encoder["default"].table(), expected)
    if init == "TEXT":
        words = tiny_llama().get_input_embeddings().weight
        assert torch.equal(expected, words[[5, 17, 42, 8, 0, 5, 17]])
