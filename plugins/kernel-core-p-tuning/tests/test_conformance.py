"""The SDK's prompt-learning suite on P-tuning, with the MLP and the LSTM encoder, and the encoder
as PEFT builds it: same parameter names and, for the same seed, the same values and logits."""

from __future__ import annotations

from types import ModuleType

import peft
import pytest
import torch

from kernel_core.peft import get_config, get_peft_model
from kernel_core_p_tuning import plugin
from kernel_core_p_tuning.config import PTuningConfig
from kernel_core_p_tuning.tuner import PTuningTuner
from kernel_core_sdk.conformance import PromptLearningConformance
from kernel_core_sdk.peft_oracle import quiet
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama


class TestPTuningConformance(PromptLearningConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture(params=["MLP", "LSTM"])
    def tuner_config(self, request: pytest.FixtureRequest) -> PTuningConfig:
        return PTuningConfig(num_virtual_tokens=4, encoder_reparameterization_type=request.param, encoder_hidden_size=12)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("p-tuning", "P_TUNING")
    assert spec.load() is PTuningTuner


@pytest.mark.parametrize(
    ("build", "fields"),
    [(tiny_llama, {}), (tiny_llama, {"encoder_hidden_size": 24}),
     (tiny_llama, {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 10}),
     (tiny_llama, {"encoder_reparameterization_type": "LSTM", "encoder_num_layers": 1}),
     (tiny_gpt2, {"encoder_reparameterization_type": "LSTM", "encoder_num_layers": 3, "encoder_dropout": 0.1})],
)
def test_same_seed_gives_peft_s_encoder_config_and_logits(build: object, fields: dict[str, object]) -> None:
    """Built while training (the encoder computes the table), ours and peft's hold the same
    parameters under the same names, complete the config alike, and give the same logits."""
    torch.manual_seed(7)
    reference = quiet(lambda: peft.get_peft_model(build(), peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, **fields)))
    torch.manual_seed(7)
    ours = get_peft_model(build(), get_config("p-tuning", num_virtual_tokens=5, **fields))
    theirs = reference.prompt_encoder["default"].state_dict()
    mine = ours.base_model.prompt_encoder["default"].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    expected_config = {k: v for k, v in reference.peft_config["default"].to_dict().items() if k in ours.peft_config["default"].to_dict()}
    assert {k: ours.peft_config["default"].to_dict()[k] for k in expected_config} == expected_config
    ids = torch.randint(64, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(input_ids=ids).logits, quiet(lambda: reference.eval()(input_ids=ids).logits), rtol=0, atol=0)


def test_the_mlp_ignores_encoder_num_layers_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="encoder_num_layers"):
        get_peft_model(tiny_llama(), get_config("p-tuning", num_virtual_tokens=3, encoder_num_layers=4))
