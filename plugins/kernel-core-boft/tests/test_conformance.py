"""The SDK's tuner conformance suite, run against BOFT on Linear layers (with and without bias),
once as block-diagonal OFT with a scale (one butterfly factor) and once with three factors and
block dropout; and the butterfly layout against PEFT's own permutations."""

from __future__ import annotations

from types import ModuleType

import peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_boft import plugin
from kernel_core_boft.butterfly import Layout
from kernel_core_boft.config import BOFTConfig
from kernel_core_boft.tuner import BOFTTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

LINEARS = {k: v for k, v in CANDIDATES.items() if k != "embedding"}  # PEFT's BOFT has no Embedding layer


class TestBOFTConformance(TunerConformance):
    candidates = LINEARS

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)  # PEFT's BOFT has no Conv1D layer either

    @pytest.fixture
    def tuner_config(self) -> BOFTConfig:
        return BOFTConfig(target_modules=["up_proj"], boft_block_size=4, init_weights=False)


class TestBOFTButterflyConformance(TestBOFTConformance):
    @pytest.fixture
    def tuner_config(self) -> BOFTConfig:
        return BOFTConfig(
            target_modules=["up_proj"], boft_block_size=0, boft_block_num=4, boft_n_butterfly_factor=3,
            boft_dropout=0.5, init_weights=False,
        )


@pytest.mark.parametrize(
    ("in_features", "block_size", "block_num", "factors"),
    [(16, 4, 0, 1), (16, 2, 0, 3), (16, 0, 4, 2), (32, 4, 0, 4), (64, 0, 8, 4), (48, 2, 0, 4), (24, 0, 6, 2)],
)
def test_permutations_are_peft_s(in_features: int, block_size: int, block_num: int, factors: int) -> None:
    layout = Layout.of(in_features, block_size, block_num, factors, "m")
    reference = [
        peft.tuners.boft.layer.BOFTLayer.block_butterfly_perm(
            None, in_features, layout.blocks // 2**i, layout.block_size // 2, factors - 1
        )
        for i in range(factors)
    ]
    assert torch.equal(layout.permutations(), torch.stack(reference))


@pytest.mark.parametrize(
    ("block_size", "block_num", "factors", "message"),
    [(3, 0, 1, "boft_block_size=3 does not divide in_features"), (0, 3, 1, "boft_block_num=3 does not divide in_features"),
     (0, 4, 4, r"boft_block_num=4 must be a multiple of 2\^\(boft_n_butterfly_factor-1\)=8"),
     (8, 0, 3, r"boft_block_size=8 times 2\^\(boft_n_butterfly_factor-1\)=4 does not divide in_features"),
     (0, 16, 2, "with butterfly factors, boft_block_num=16 and boft_block_size=1 must be even")],
)
def test_layouts_peft_refuses_are_refused_naming_the_module(block_size: int, block_num: int, factors: int, message: str) -> None:
    with pytest.raises(ValueError, match=rf"BOFT on mlp\.up_proj \(in_features=16\): {message}"):
        Layout.of(16, block_size, block_num, factors, "mlp.up_proj")


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("boft", "BOFT")
    assert spec.load() is BOFTTuner
