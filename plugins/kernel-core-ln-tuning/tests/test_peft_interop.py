"""LayerNorm-tuning adapters move between kernel-core and Hugging Face ``peft`` (the oracle)
with the same logits, on Llama's RMSNorm and GPT-2's LayerNorm.

peft's noise floor here (its merged logits against its unmerged ones) is exactly zero: merging
swaps the tuned copy in, the same arithmetic either way. So ours must equal peft's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_ln_tuning.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_equal_weights,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    assert_peft_reads_config,
    assert_same,
    logits,
    noise_floor,
    peft_made,
    peft_merged,
    peft_unloaded,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama

CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "llama-defaults": (tiny_llama, {}),
    "llama-regex": (tiny_llama, {"target_modules": r".*layers\.\d+\.(input|post_attention)_layernorm"}),
    "llama-excluded": (tiny_llama, {"target_modules": ["input_layernorm", "norm"], "exclude_modules": ["model.layers.0.input_layernorm"]}),
    "llama-modules-to-save": (tiny_llama, {"target_modules": ["post_attention_layernorm"], "modules_to_save": ["lm_head"]}),
    "gpt2-defaults": (tiny_gpt2, {}),
    "gpt2-list": (tiny_gpt2, {"target_modules": ["ln_2", "ln_f"]}),
}


def _peft_model(build: Callable[[], PreTrainedModel], fields: dict[str, Any], seed: int = 3) -> peft.PeftModel:
    return peft_made(build, peft.LNTuningConfig(**fields), seed)


def plain_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The state dict as a plain transformers model has it. peft's LayerNorm tuning leaves a
    ``modules_to_save`` wrapper in the model merge_and_unload returns (its unload only replaces
    modules with a ``base_layer``), where its other methods put the trained copy in place; the
    copy is what that model computes with, so it is the weight to compare."""
    state = {}
    for key, value in model.state_dict().items():
        if ".original_module." in key:
            continue
        state[key.replace(".modules_to_save.default.", ".")] = value
    return state


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("ln_tuning", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    assert_peft_reads_config(tmp_path)  # our adapter_config.json holds only keys peft's LNTuningConfig has


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_model(build, fields)
    reference.save_pretrained(str(tmp_path))

    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    wrapped = {name for name, _ in reference.named_modules() if name.endswith(".ln_tuning_layers")}
    assert wrapped == {name for name, _ in ours.named_modules() if name.endswith(".ln_tuning_layers")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights; merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = _peft_model(build, fields)
    reference.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(build(), tmp_path)

    unmerged = logits(ours)
    ours.merge_adapter()
    merged_logits = logits(ours)
    ours.unmerge_adapter()
    base = peft_unloaded(reference).state_dict()
    saved = tuple(fields.get("modules_to_save") or ())  # what unload keeps of those is the core's rule
    for key, value in ours.unload().state_dict().items():
        if not key.startswith(saved):
            assert torch.equal(value, base[key]), f"{key} after unmerge"

    merged = PeftModel.from_pretrained(build(), tmp_path).merge_and_unload().state_dict()
    expected = plain_state(peft_merged(reference))
    assert_equal_weights(merged, expected)
    assert_same(merged_logits, unmerged, noise_floor(reference))


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters and the base, one per row, in one forward: each row is what peft
    gives with that adapter alone (peft itself has no mixed batches for LayerNorm tuning)."""
    fields = {"target_modules": ["input_layernorm", "norm"]}
    references = {}
    for seed, name in enumerate(("first", "second")):
        references[name] = reference = _peft_model(tiny_llama, fields, seed)
        reference.save_pretrained(str(tmp_path / name))
    assert_mixed_batch(tiny_llama, references, tmp_path, floor=0.0)


def test_default_tables_are_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING
