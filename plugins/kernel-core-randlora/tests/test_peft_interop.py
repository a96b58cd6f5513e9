"""RandLoRA adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with the same
logits, both ways, with the bases saved and without them (then drawn again from
``projection_prng_key`` on both sides, dense, sparse and very sparse), and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter (two orders of the same float32 arithmetic), never a chosen tolerance.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from packaging.version import Version
from peft.utils.constants import TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_randlora.config import DEFAULT_TARGETS
from kernel_core_sdk.peft_oracle import (
    as_peft_table,
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    edit_adapter_config,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
    rewrite_adapter_tensors,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a RandLoRA adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, quiet(lambda: peft.RandLoraConfig(**fields, init_weights=False)), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "architecture-defaults": (tiny_llama, {"r": 8}),  # peft's alpha 640: scale 80
    "own-knobs": (
        tiny_llama,  # bases sliced for three module shapes (5 does not divide 16: 4 bases); dropout is off in eval
        {"r": 5, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"], "projection_prng_key": 11,
         "randlora_alpha": 12, "randlora_dropout": 0.2},
    ),
    "sparse": (tiny_llama, {"r": 4, "target_modules": ["k_proj", "o_proj", "gate_proj"], "sparse": True, "randlora_alpha": 8}),
    "very-sparse-not-saved": (
        tiny_llama, {"r": 3, "target_modules": ["q_proj", "up_proj"], "very_sparse": True, "save_projection": False, "randlora_alpha": 6}
    ),
    "projections-not-saved": (
        tiny_llama, {"r": 4, "target_modules": ["k_proj", "o_proj", "gate_proj"], "projection_prng_key": 5, "save_projection": False,
                     "randlora_alpha": 8}
    ),
    "regex": (tiny_llama, {"r": 4, "target_modules": r".*\.(k_proj|down_proj)", "randlora_alpha": 8}),
    # the largest module is (32, 32) elementwise (gate/up 32 x 16, down 16 x 32): min_dim 32, 6 bases of r 6
    "all-linear": (tiny_llama, {"r": 6, "target_modules": "all-linear", "randlora_alpha": 12}),
    "layers-to-transform": (
        tiny_llama, {"r": 4, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": "layers",
                     "randlora_alpha": 8}
    ),
    "modules-to-save": (tiny_llama, {"r": 4, "target_modules": ["v_proj"], "modules_to_save": ["lm_head"], "randlora_alpha": 8}),
    "bias-randlora-only": (
        lambda: tiny_llama(attention_bias=True), {"r": 4, "target_modules": ["q_proj", "k_proj"], "bias": "randlora_only", "randlora_alpha": 8}
    ),
    "conv1d": (
        tiny_gpt2, {"r": 4, "target_modules": ["c_attn", "mlp.c_proj"], "fan_in_fan_out": True, "save_projection": False, "randlora_alpha": 8}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("randlora", **fields, init_weights=False)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.RandLoraConfig().to_dict()), "adapter_config.json holds only keys peft's RandLoraConfig has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    assert_peft_loads_in_ours(reference, build, tmp_path)


#: peft saves RandLoRA's shared bases once per model from 0.22 on; before, once per wrapped layer too.
PEFT_SAVES_BASES_ONCE = Version(peft.__version__) >= Version("0.22")


def _layer_copies(tensors: dict[str, torch.Tensor]) -> set[str]:
    """The keys of a file's per-layer copies of the bases (not the model's ``base_model.randlora_A``/``_B``)."""
    return {key for key in tensors if key.endswith(("randlora_A", "randlora_B")) and not key.startswith("base_model.randlora_")}


@pytest.mark.parametrize("options", [{}, {"save_projection": False}, {"sparse": True}, {"very_sparse": True}])
def test_bases_are_peft_s_and_saved_where_peft_saves_them(options: dict[str, bool], tmp_path: Path) -> None:
    """The bases drawn from the key are peft's bit for bit (dense ones drawn in bfloat16, then
    cast to the weights' dtype); the file holds them once per model and once per wrapped layer,
    as peft before 0.22 writes them, or nowhere without ``save_projection``. peft 0.22 writes
    the model's copy only, and loads either layout; 0.21 loads that one too but warns of
    missing keys, so ours keeps the layer copies, which both load without a warning."""
    fields = {"r": 3, "target_modules": ["q_proj", "down_proj"], "projection_prng_key": 7, **options}
    reference = _peft_made(tiny_llama, fields, tmp_path / "peft")
    ours = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")

    theirs, mine = (load_file(str(tmp_path / side / "adapter_model.safetensors")) for side in ("peft", "ours"))
    copies = _layer_copies(mine)
    assert mine.keys() - (copies if PEFT_SAVES_BASES_ONCE else set()) == theirs.keys()
    for key, value in mine.items():
        expected = theirs[key] if key in theirs else theirs["base_model." + key.rsplit(".", 1)[1]]
        assert torch.equal(value, expected), key
    bases = sorted(key for key in mine if key.endswith(("randlora_A", "randlora_B")))
    assert len(bases) == (0 if options.get("save_projection") is False else 2 + 2 * 4) and len(copies) == max(len(bases) - 2, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "ours"))
    assert not [w for w in caught if "missing adapter keys" in str(w.message)], "peft loads our file without missing keys"
    fresh = get_peft_model(tiny_llama(), get_config("randlora", **fields))  # drawn, not loaded
    for name in ("randlora_A", "randlora_B"):
        assert torch.equal(getattr(fresh.base_model, name)["default"], getattr(reference.base_model, name)["default"]), name
    # as large as the largest wrapped module (down_proj: 16 out, 32 in): min 16, max 32, ceil(16 / 3) = 6 bases
    assert fresh.base_model.randlora_A["default"].shape == (3, 1, 16) and fresh.base_model.randlora_B["default"].shape == (32, 6, 3)


def test_a_file_with_the_bases_once_per_model_loads(tmp_path: Path) -> None:
    """peft 0.22's layout, the bases once per model only (made here from peft's file on every
    version), loads in ours with each layer using the file's bases: its key is changed, so bases
    drawn rather than loaded would differ."""
    reference = _peft_made(tiny_llama, {"r": 3, "target_modules": ["q_proj", "down_proj"], "projection_prng_key": 7}, tmp_path)
    rewrite_adapter_tensors(tmp_path, lambda tensors: [tensors.pop(key) for key in _layer_copies(tensors)])
    edit_adapter_config(tmp_path, projection_prng_key=8)
    assert_peft_loads_in_ours(reference, tiny_llama, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, and merge then unmerge gives what peft's
    merge then unmerge gives, bit for bit (the update is peft's, so is the rounding: with a large
    scale, W + ΔW - ΔW is not W to float32 precision on either side)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    round_trip = copy.deepcopy(reference)
    round_trip.merge_adapter()
    quiet(round_trip.unmerge_adapter)
    expected = peft_unloaded(round_trip).state_dict()
    for key, value in ours.unload().state_dict().items():
        if key.endswith(".bias") and fields.get("bias", "none") != "none":
            continue  # trained biases are the adapter's, not the base's
        assert torch.equal(value, expected[key]), f"{key} after unmerge differs from peft's"


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (different targets and ranks, one key) and the base, one per row,
    in one forward: each row is what peft gives with that adapter alone."""
    fields = {
        "first": {"r": 6, "target_modules": ["q_proj", "down_proj"], "randlora_alpha": 12},
        "second": {"r": 4, "target_modules": ["v_proj", "up_proj"], "randlora_alpha": 8},
    }
    references = {}
    for seed, name in enumerate(fields):
        references[name] = _peft_made(tiny_llama, fields[name], tmp_path / name, seed)
    ours = assert_mixed_batch(tiny_llama, references, tmp_path)

    ours.delete_adapter("second")
    assert list(ours.base_model.randlora_A) == ["first"] and list(ours.base_model.randlora_B) == ["first"]
    assert not [key for key in ours.state_dict() if key.endswith(".second")]


def test_default_table_is_peft_s() -> None:
    """target_modules=None means what it means in peft, for every model type."""
    assert as_peft_table(DEFAULT_TARGETS) == TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING
    assert get_peft_model(tiny_llama(), get_config("randlora", r=4)).peft_config["default"].target_modules == ["q_proj", "v_proj"]
