"""AdaLoRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, after training has pruned them (``rank_pattern`` set, tensors truncated in the file).

Each case trains an adapter on one side past ``total_step - tfinal`` (so the rank pattern is
final and some modules lost triplets, one possibly all of them), saves it, and loads it on the
other side. "Same" is judged against peft's own noise floor: how far peft's merged model is from
its unmerged one on that adapter. Ours must be no farther from peft than that.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_adalora.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table, assert_changes_output, assert_equal_weights, assert_mixed_batch, assert_peft_reads_config, assert_same,
    logits, noise_floor, peft_load, peft_merged, quiet,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama

#: A float64 bound on pruned-in-memory against truncated-in-file logits: far above float64
#: reordering (~1e-15 on logits of order 1), far below any dropped or misplaced triplet (> 1e-3).
TRUNCATION_FLOAT64_BOUND = 1e-9
SCHEDULE = {"total_step": 8, "tinit": 1, "tfinal": 2, "init_lora_weights": False}
CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "regex-knobs": (
        tiny_llama,
        {"target_modules": r".*\.(q_proj|v_proj|down_proj)", "init_r": 6, "target_r": 2, "lora_alpha": 16,
         "beta1": 0.6, "beta2": 0.95, "deltaT": 2, "orth_reg_weight": 0.2, **SCHEDULE},
    ),
    "layers-to-transform": (
        tiny_llama, {"target_modules": ["k_proj", "o_proj", "up_proj"], "layers_to_transform": [1], "init_r": 4, "target_r": 1, **SCHEDULE}
    ),
    "modules-to-save": (
        tiny_llama,
        {"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["model.layers.0.self_attn.v_proj"], "modules_to_save": ["lm_head"],
         "init_r": 3, "target_r": 2, **SCHEDULE},
    ),
    "architecture-defaults": (tiny_llama, {"init_r": 4, "target_r": 2, **SCHEDULE}),
    "conv1d": (
        lambda: tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True, "init_r": 4, "target_r": 2, **SCHEDULE},
    ),
}


def train(model: torch.nn.Module, allocate: Callable[[int], None], steps: int) -> None:
    """AdamW steps on fixed random batches, allocating after each step as AdaLoRA asks."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(5)
    for step in range(1, steps + 1):
        batch = torch.randint(0, 64, (2, 9), generator=generator)
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        allocate(step)
        optimizer.zero_grad()
    model.eval()


def peft_trained(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path) -> peft.PeftModel:
    torch.manual_seed(0)
    reference = quiet(lambda: peft.get_peft_model(build(), peft.AdaLoraConfig(task_type="CAUSAL_LM", **fields)))
    train(reference, reference.base_model.update_and_allocate, fields["total_step"])
    quiet(lambda: reference.save_pretrained(str(folder)))
    return reference


def _check_pruned(folder: Path) -> None:
    """The file holds the pattern's ranks, and the schedule really pruned something."""
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    tensors = load_file(folder / "adapter_model.safetensors")
    assert pattern and any(not all(kept) for kept in pattern.values())
    for key, kept in pattern.items():
        module = "base_model.model." + key.removesuffix(".lora_E")
        assert tensors[f"{module}.lora_E"].shape == (sum(kept), 1)
        assert tensors[f"{module}.lora_A"].shape[0] == tensors[f"{module}.lora_B"].shape[1] == sum(kept)
    assert not any("ranknum" in key for key in tensors)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_trained_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    peft_trained(build, fields, tmp_path)
    _check_pruned(tmp_path)
    reference = peft_load(build, tmp_path)

    ours = PeftModel.from_pretrained(build(), tmp_path)

    assert_changes_output(logits(ours), logits(build()))
    assert_same(logits(ours), logits(reference), noise_floor(reference))
    assert not any(p.requires_grad for p in ours.parameters()), "loaded for inference: nothing trains"


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_trained_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    torch.manual_seed(0)
    ours = get_peft_model(build(), get_config("adalora", **fields))
    train(ours, ours.on_optimizer_step, fields["total_step"])
    ours.save_pretrained(tmp_path)
    _check_pruned(tmp_path)

    assert_peft_reads_config(tmp_path)  # only keys peft's AdaLoraConfig has
    reference = peft_load(build, tmp_path)

    loaded = PeftModel.from_pretrained(build(), tmp_path)
    assert_changes_output(logits(ours), logits(build()))
    # peft and ours read the same truncated file: the same arithmetic, judged by peft's noise floor
    assert_same(logits(loaded), logits(reference), noise_floor(reference))
    # and the file keeps the function ours trained. Compared in float64: in float32 the truncated
    # rank sums (pruned triplets dropped, not multiplied by zero) round in another order, noise of
    # the floor's own size (5.96e-8 against 5.77e-8 on an AMD EPYC), not a difference of function.
    assert_same(logits(loaded.double()), logits(ours.double()), TRUNCATION_FLOAT64_BOUND)


@pytest.mark.parametrize("case", ["conv1d", "regex-knobs"])
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back
    as peft's merge then unmerge does (bit for bit: adding and subtracting the update rounds)."""
    build, fields = CASES[case]
    peft_trained(build, fields, tmp_path)
    reference = peft_load(build, tmp_path)
    ours = PeftModel.from_pretrained(build(), tmp_path)

    unmerged = logits(ours)
    ours.merge_adapter()
    merged_logits = logits(ours)
    ours.unmerge_adapter()
    round_trip = copy.deepcopy(reference)
    quiet(round_trip.merge_adapter)
    quiet(round_trip.unmerge_adapter)
    expected = quiet(round_trip.unload).state_dict()
    for key, value in ours.unload().state_dict().items():
        assert torch.equal(value, expected[key]), f"{key} after merge and unmerge differs from peft's"

    ours = PeftModel.from_pretrained(build(), tmp_path)
    assert_equal_weights(ours.merge_and_unload().state_dict(), peft_merged(reference).state_dict())
    assert_same(merged_logits, unmerged, noise_floor(reference))


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-trained (differently pruned) adapters and the base, one per row, in one forward:
    each row is what peft gives with that adapter alone."""
    build, fields = CASES["regex-knobs"]
    references = {}
    for seed, name in enumerate(("first", "second")):
        torch.manual_seed(seed)
        peft_trained(build, {**fields, "target_r": 2 + seed}, tmp_path / name)
        references[name] = peft_load(build, tmp_path / name)
    assert_mixed_batch(build, references, tmp_path)


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING
