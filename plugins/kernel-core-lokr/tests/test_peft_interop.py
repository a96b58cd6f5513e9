"""LoKr adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same logits.

Each case builds the same random tiny model twice; one side makes an adapter with non-default
options and random factors and saves it, the other loads it. "Same" is judged against peft's
own noise floor: how far peft's merged model is from peft's unmerged one on that adapter (the
two orders of the same float32 arithmetic). Ours must be no farther from peft than that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_lokr.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_changes_output,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    assert_peft_reads_config,
    assert_same,
    logits,
    noise_floor,
    peft_load,
    peft_made,
    peft_merged,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import TinyConvNet, images, tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {}),
    # adapter tensors stay float32 over a bfloat16 base, as peft upcasts them
    "bfloat16-base": (lambda: tiny_llama().to(torch.bfloat16), {"target_modules": ["q_proj", "down_proj"], "r": 2}),
    # hidden 16 splits (4, 4), intermediate 32 (4, 8): rank 1 makes every factor a product,
    # rank 2 only W2 of a 32-wide side, rank 8 none
    "patterns-decompose-both": (
        tiny_llama,
        {"target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"], "r": 2, "alpha": 3, "decompose_both": True,
         "rank_pattern": {"down_proj": 1, r"layers\.1\.self_attn\.q_proj": 8}, "alpha_pattern": {"up_proj": 1.5}},
    ),
    "decompose-factor-lycoris-init": (
        tiny_llama,
        {"target_modules": ["k_proj", "gate_proj", "down_proj"], "r": 1, "decompose_factor": 2, "init_weights": "lycoris"},
    ),
    "regex": (tiny_llama, {"target_modules": r".*\.(k_proj|gate_proj|o_proj)", "r": 1, "alpha": 2}),
    "layers-to-transform": (
        tiny_llama, {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "all-linear-excluded-modules-to-save": (
        tiny_llama,
        {"target_modules": "all-linear", "exclude_modules": ["o_proj", "model.layers.1.self_attn.q_proj"],
         "modules_to_save": ["lm_head"], "r": 2},
    ),
    "dropouts-set": (
        lambda: tiny_llama(attention_bias=True),
        {"target_modules": ["q_proj", "k_proj", "down_proj"], "rank_dropout": 0.3, "module_dropout": 0.2,
         "rank_dropout_scale": True, "use_effective_conv2d": True},
    ),
}


def _peft_made(
    build: Callable[[], PreTrainedModel], fields: dict[str, Any], seed: int = 3, folder: Path | None = None
) -> peft.PeftModel:
    return peft_made(build, peft.LoKrConfig(**(fields | {"init_weights": False})), seed, folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("lokr", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # our adapter_config.json holds only keys peft's LoKrConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, folder=tmp_path)

    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    assert {p.dtype for n, p in ours.named_parameters() if "_w" in n.rsplit(".", 3)[-2]} == {torch.float32}
    peft_shapes = {k: v.shape for k, v in reference.state_dict().items() if "lokr_" in k}
    assert {k: v.shape for k, v in ours.state_dict().items() if "lokr_" in k} == peft_shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back
    as peft's merge then unmerge does (exactly in float32 here; bfloat16 keeps the rounding)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, folder=tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    restored = quiet(lambda: copy.deepcopy(reference))
    quiet(lambda: (restored.merge_adapter(), restored.unmerge_adapter()))
    expected_restored = restored.unload().state_dict()
    adapted = {key.split(".lokr_")[0].removeprefix("base_model.model.") for key in reference.state_dict() if ".lokr_" in key}
    assert adapted, "the adapter wraps modules"
    ours_restored = ours.unload().state_dict()
    for key, value in ours_restored.items():
        if key.rsplit(".", 1)[0] in adapted:
            assert torch.equal(value, expected_restored[key]), f"{key} after unmerge differs from peft's"
    if ours_restored[next(iter(ours_restored))].dtype == torch.float32:
        base = peft_unloaded(reference).state_dict()
        for key, value in ours_restored.items():
            torch.testing.assert_close(value, base[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key} after unmerge: {m}")


@pytest.mark.parametrize("scale", [False, True])
def test_training_forward_with_dropouts_equals_peft(scale: bool, tmp_path: Path) -> None:
    """rank_dropout (with and without rank_dropout_scale) and module_dropout act only while training; with the same random draws a
    training forward gives peft's logits (the dropout masks are drawn in peft's order)."""
    fields = {"target_modules": ["q_proj", "v_proj", "down_proj"], "rank_dropout": 0.4, "module_dropout": 0.3, "r": 1,
              "rank_dropout_scale": scale}
    reference = _peft_made(tiny_llama, fields, folder=tmp_path)
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    floor = noise_floor(reference)
    evaluated = logits(ours)
    outputs = []
    for model in (reference, ours):
        model.train()
        torch.manual_seed(11)
        outputs.append(logits(model))
    assert_same(outputs[1], outputs[0], floor)
    assert (outputs[1] - evaluated).abs().max() > 1e-3, "the dropouts must change a training forward"
    ours.eval()
    assert torch.equal(logits(ours), evaluated), "no dropout outside training"


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters with different ranks and the base, one per row, in one forward:
    each row is what peft gives with that adapter alone."""
    references = {}
    for seed, (name, rank) in enumerate((("first", 1), ("second", 8))):
        references[name] = _peft_made(tiny_llama, {"target_modules": ["k_proj", "up_proj", "down_proj"], "r": rank}, seed, folder=tmp_path / name)
    assert_mixed_batch(tiny_llama, references, tmp_path)


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    expected = TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
    assert as_peft_table(DEFAULT_TARGETS) == expected


# conv1 (8 x 4 x 3x3) splits as (2, 4) x (2, 2); conv2 (grouped, 8 x 4 x 3x3) alike; conv3 (6 x 8 x 1x1)
# as (2, 3) x (2, 4): rank 1 makes each W2 a product (CP with use_effective_conv2d, but not on 1x1),
# rank 4 keeps it whole
CONV_CASES: dict[str, dict[str, Any]] = {
    "flattened": {"target_modules": ["conv1", "conv2", "conv3", "head"], "r": 1, "alpha": 2, "decompose_both": True},
    "effective-conv2d": {
        "target_modules": r"conv\d|head", "r": 1, "use_effective_conv2d": True, "rank_pattern": {"conv3": 4},
        "init_weights": "lycoris",
    },
}


def _conv_out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(images())


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_both_ways_and_merged(case: str, tmp_path: Path) -> None:
    """Conv2d targets (1x1, 3x3, grouped; the CP form with use_effective_conv2d): files both ways
    with peft's outputs, merged weights equal to peft's."""
    fields = CONV_CASES[case]
    reference = _peft_made(TinyConvNet, fields, folder=tmp_path / "peft")
    merged_reference = peft_merged(reference)
    floor = noise_floor(reference, _conv_out)
    ours = PeftModel.from_pretrained(TinyConvNet(), tmp_path / "peft")
    assert_changes_output(_conv_out(reference), _conv_out(TinyConvNet()))
    assert_same(_conv_out(ours), _conv_out(reference), floor)
    merged = ours.merge_and_unload().state_dict()
    for key, value in merged_reference.state_dict().items():
        assert torch.equal(merged[key], value), f"{key}: merged weight differs from peft's"

    ours = get_peft_model(TinyConvNet(), get_config("lokr", **fields)).eval()
    randomise(ours)
    ours.save_pretrained(tmp_path / "ours")
    reference = peft_load(TinyConvNet, tmp_path / "ours")
    floor = noise_floor(reference, _conv_out)
    assert_same(_conv_out(ours), _conv_out(reference), floor)
