"""The SDK's prompt-learning suite on prefix tuning, with and without the projection MLP, and the
encoder as PEFT builds it: same parameter names and, for the same seed, the same values."""

from __future__ import annotations

from types import ModuleType

import peft
import pytest
import torch

from kernel_core.peft import get_config, get_peft_model
from kernel_core_prefix_tuning import plugin
from kernel_core_prefix_tuning.config import PrefixTuningConfig
from kernel_core_prefix_tuning.tuner import PrefixTuningTuner
from kernel_core_sdk.conformance import PromptLearningConformance
from kernel_core_sdk.peft_oracle import quiet
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama


class TestPrefixTuningConformance(PromptLearningConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture(params=[False, True], ids=["table", "projection"])
    def tuner_config(self, request: pytest.FixtureRequest) -> PrefixTuningConfig:
        return PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=request.param, encoder_hidden_size=12)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("prefix-tuning", "PREFIX_TUNING")
    assert spec.load() is PrefixTuningTuner


@pytest.mark.parametrize(
    ("build", "fields"),
    [(tiny_llama, {}), (tiny_llama, {"prefix_projection": True}), (tiny_llama, {"prefix_projection": True, "init_weights": "zero"}),
     (tiny_llama, {"init_weights": "zero"}), (tiny_gpt2, {"prefix_projection": True, "encoder_hidden_size": 20})],
)
def test_same_seed_gives_peft_s_encoder_config_and_logits(build: object, fields: dict[str, object]) -> None:
    """Built while training (the projection computes the table), ours and peft's hold the same
    parameters under the same names, complete the config alike (GQA: key/value heads), and
    give the same logits."""
    torch.manual_seed(7)
    reference = quiet(lambda: peft.get_peft_model(build(), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, **fields)))
    torch.manual_seed(7)
    ours = get_peft_model(build(), get_config("prefix-tuning", num_virtual_tokens=5, **fields))
    theirs = reference.prompt_encoder["default"].state_dict()
    mine = ours.base_model.prompt_encoder["default"].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    expected_config = {k: v for k, v in reference.peft_config["default"].to_dict().items() if k in ours.peft_config["default"].to_dict()}
    assert {k: ours.peft_config["default"].to_dict()[k] for k in expected_config} == expected_config
    ids = torch.randint(64, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(input_ids=ids).logits, quiet(lambda: reference.eval()(input_ids=ids).logits), rtol=0, atol=0)
