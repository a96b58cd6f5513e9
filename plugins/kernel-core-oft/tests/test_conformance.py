"""The SDK's tuner conformance suite, run against OFT on Linear layers (with and without bias),
once with PEFT's default parameterisation (Neumann series, one rotation per block) and once with
the other knobs (exact Cayley, a shared block, COFT's constraint, blocks given by r)."""

from __future__ import annotations

import warnings
from types import ModuleType

import peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core_oft import plugin
from kernel_core_oft.config import OFTConfig
from kernel_core_oft.layer import Linear, block_layout
from kernel_core_oft.tuner import OFTTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES

class TestOFTConformance(TunerConformance):
    # Not Embedding here: one of the suite's SGD steps (lr 0.1) on N(0, 1) embeddings takes the
    # Neumann-series R far from orthogonal (condition number ~600, measured), so merging into a
    # float32 table and unmerging cannot give it back within the suite's 1e-5, for PEFT either.
    # The exact Cayley transform stays orthogonal: TestOFTOptionsConformance runs Embedding.
    candidates = {k: v for k, v in CANDIDATES.items() if k != "embedding"}

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return Conv1D(8, 16)  # PEFT's OFT has no Conv1D layer either

    @pytest.fixture
    def tuner_config(self) -> OFTConfig:
        return OFTConfig(target_modules=["up_proj"], oft_block_size=4, init_weights=False)


class TestOFTOptionsConformance(TestOFTConformance):
    candidates = CANDIDATES  # Linear with and without bias, Embedding

    @pytest.fixture
    def tuner_config(self) -> OFTConfig:
        return OFTConfig(
            target_modules=["up_proj"], r=2, oft_block_size=0, block_share=True, coft=True, eps=0.5,
            use_cayley_neumann=False, init_weights=False,
        )


@pytest.mark.parametrize("in_features", [16, 30, 49])
def test_block_layout_fits_in_features_as_peft(in_features: int) -> None:
    """A block size or count that does not divide ``in_features`` moves to the divisor PEFT's
    adjustment picks (the nearest, the lower one on a tie), with a warning naming the field."""
    for given in range(1, in_features + 5):
        expected = peft.tuners.oft.layer.OFTLayer.adjust_oft_parameters(None, in_features, given)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert block_layout(in_features, 0, given) == (in_features // expected, expected)
            assert block_layout(in_features, given, 0) == (expected, in_features // expected)
        assert len(caught) == (0 if expected == given else 2)
        assert all("does not divide in_features" in str(w.message) for w in caught)


def test_rotations_are_orthogonal_and_the_identity_at_init() -> None:
    for neumann in (False, True):
        config = OFTConfig(target_modules=["up_proj"], oft_block_size=4, use_cayley_neumann=neumann)
        layer = Linear(nn.Linear(16, 8), "default", config)
        torch.testing.assert_close(layer.oft_R["default"].matrix(), torch.eye(16))
    exact = Linear(nn.Linear(16, 8), "default", config.model_copy(update={"use_cayley_neumann": False, "init_weights": False}))
    rotation = exact.oft_R["default"].matrix()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(16), rtol=0, atol=1e-6)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("oft", "OFT")
    assert spec.load() is OFTTuner
