"""The SDK's tuner conformance suite, run against VB-LoRA on Linear and Conv1D, wrapped on their
own (each layer then uses the bank it drew for the adapter)."""

from __future__ import annotations

from types import ModuleType

import pytest
from transformers.pytorch_utils import Conv1D

from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES
from kernel_core_vblora import plugin
from kernel_core_vblora.config import VBLoRAConfig
from kernel_core_vblora.tuner import VBLoRATuner


class TestVBLoRAConformance(TunerConformance):
    # PEFT's VB-LoRA wraps no Embedding (can_wrap declines it: test_declines_unsupported_modules)
    candidates = {**{k: v for k, v in CANDIDATES.items() if k != "embedding"}, "conv1d": lambda: Conv1D(8, 16)}
    module_names = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> VBLoRAConfig:
        # vector_length 4 divides every candidate's sides; a new VB-LoRA adapter is never the identity,
        # and a larger bank and logits than the defaults make one training step show in the output.
        return VBLoRAConfig(
            target_modules=["q_proj", "down_proj"], r=3, num_vectors=6, vector_length=4, topk=2,
            init_vector_bank_bound=0.5, init_logits_std=1.0,
        )


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("vblora", "VBLORA")
    assert spec.load() is VBLoRATuner
