"""VB-LoRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, both ways, with full logits and in the compact top-k form (``save_only_topk_weights``),
and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter (two orders of the same float32 arithmetic), never a chosen tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    assert_same,
    logits,
    noise_floor,
    peft_load,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama
from kernel_core_vblora.config import DEFAULT_TARGETS

BANK = {"num_vectors": 12, "vector_length": 8}


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a VB-LoRA adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.VBLoRAConfig(**fields), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"r": 4, **BANK}),
    "own-knobs": (
        tiny_llama,  # three module shapes; dropout is off in eval
        {"r": 6, "num_vectors": 20, "vector_length": 4, "topk": 3, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
         "vblora_dropout": 0.2, "init_logits_std": 0.5, "init_vector_bank_bound": 0.1},
    ),
    "regex": (tiny_llama, {"r": 4, **BANK, "target_modules": r".*\.(k_proj|down_proj)"}),
    "exclude": (tiny_llama, {"r": 4, **BANK, "target_modules": ["q_proj", "o_proj"], "exclude_modules": ["model.layers.0.self_attn.o_proj"]}),
    "layers-to-transform": (
        tiny_llama, {"r": 4, **BANK, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    ),
    "modules-to-save": (tiny_llama, {"r": 4, **BANK, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
    "bias-vblora-only": (
        lambda: tiny_llama(attention_bias=True), {"r": 4, **BANK, "target_modules": ["q_proj", "k_proj"], "bias": "vblora_only"}
    ),
    "conv1d": (tiny_gpt2, {"r": 4, "num_vectors": 10, "vector_length": 16, "target_modules": ["c_attn", "mlp.c_proj"], "fan_in_fan_out": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("vblora", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.VBLoRAConfig().to_dict()), "adapter_config.json holds only keys peft's VBLoRAConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    ours.save_pretrained(tmp_path / "ours")
    theirs, mine = (load_file(str(folder / "adapter_model.safetensors")) for folder in (tmp_path, tmp_path / "ours"))
    assert mine.keys() == theirs.keys() and "base_model.vblora_vector_bank" in mine, "the bank is saved once, as peft does"
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


def test_one_seed_gives_peft_s_initial_adapter() -> None:
    """Every target draws a bank and its logits from torch's generator in peft's order, and the
    model keeps the last bank, as peft does: the same seed gives the same adapter."""
    fields = {"r": 4, **BANK, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    torch.manual_seed(5)
    reference = quiet(lambda: peft.get_peft_model(tiny_llama(), peft.VBLoRAConfig(**fields)))
    torch.manual_seed(5)
    ours = get_peft_model(tiny_llama(), get_config("vblora", **fields))
    expected = reference.state_dict()
    adapter = {key: value for key, value in ours.state_dict().items() if "vblora_" in key}
    assert len(adapter) == 2 * 3 * 2 + 1
    for key, value in adapter.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("made_by", ["peft", "ours"])
def test_topk_only_files_move_both_ways(made_by: str, tmp_path: Path) -> None:
    """A save_only_topk_weights file holds peft's keys and index type; either side's file loads in
    both with the same logits (both loaded from the file: the compact form rounds the weights)."""
    build, fields = tiny_llama, {"r": 4, **BANK, "topk": 3, "target_modules": ["q_proj", "down_proj"], "save_only_topk_weights": True}
    if made_by == "peft":
        _peft_made(build, fields, tmp_path)
    else:
        ours = get_peft_model(build(), get_config("vblora", **fields)).eval()
        randomise(ours)
        ours.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    logits_keys = [key for key in tensors if "vblora_logits" in key]
    assert logits_keys and all(key.endswith(("_topk_indices", "_topk_weights")) for key in logits_keys)
    assert all(tensors[key].dtype == torch.uint8 and tensors[key].shape[-1] == 3 for key in logits_keys if key.endswith("_indices"))

    reference = peft_load(build, tmp_path)
    ours = quiet(lambda: PeftModel.from_pretrained(build(), tmp_path))
    assert_same(logits(ours), logits(reference), noise_floor(reference))
    assert (logits(ours) - logits(build())).abs().max() > 1e-3, "the adapter must change the output"

    ours.save_pretrained(tmp_path / "again")  # loaded top-k logits saved again in the same form
    again = peft_load(build, tmp_path / "again")
    assert_same(logits(again), logits(reference), noise_floor(reference))


def test_a_topk_only_adapter_merges_but_does_not_train(tmp_path: Path) -> None:
    fields = {"r": 4, **BANK, "target_modules": ["q_proj"], "save_only_topk_weights": True}
    _peft_made(tiny_llama, fields, tmp_path)
    assert_merges_as_peft(peft_load(tiny_llama, tmp_path), tiny_llama, tmp_path)
    ours = quiet(lambda: PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)).train()
    with pytest.raises(RuntimeError, match="save_only_topk_weights"):
        ours(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives the base back."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    base = peft_unloaded(reference).state_dict()
    for key, value in ours.unload().state_dict().items():
        if key.endswith(".bias") and fields.get("bias", "none") != "none":
            continue  # trained biases are the adapter's, not the base's
        torch.testing.assert_close(value, base[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key} after unmerge: {m}")


def test_the_bank_trains_with_its_adapter_only(tmp_path: Path) -> None:
    """The shared bank is a parameter of the model: it trains while its adapter is active, and not
    once loaded for inference; deleting the adapter drops it."""
    ours = get_peft_model(tiny_llama(), get_config("vblora", r=4, **BANK, target_modules=["q_proj"]))
    ours.add_adapter("other", get_config("vblora", r=2, **BANK, target_modules=["v_proj"]))
    bank = ours.base_model.vblora_vector_bank
    assert bank["default"].requires_grad and not bank["other"].requires_grad
    ours.set_adapter("other")
    assert not bank["default"].requires_grad and bank["other"].requires_grad
    ours.delete_adapter("other")
    assert list(bank) == ["default"] and bank["default"].requires_grad
    ours.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert not loaded.base_model.vblora_vector_bank["default"].requires_grad


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets, ranks and banks) and the base, one per row, in
    one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"r": 6, **BANK, "target_modules": ["q_proj", "down_proj"]},
        "second": {"r": 4, "num_vectors": 9, "vector_length": 4, "topk": 3, "target_modules": ["v_proj", "up_proj"]},
    }
    references = {name: _peft_made(tiny_llama, fields[name], tmp_path / name, seed) for seed, name in enumerate(fields)}
    ours = assert_mixed_batch(tiny_llama, references, tmp_path)
    assert ours.base_model.vblora_vector_bank["second"].shape == (9, 4)


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING
    model = get_peft_model(tiny_llama(), get_config("vblora", r=4, **BANK))
    assert model.peft_config["default"].target_modules == ["q_proj", "v_proj"]
