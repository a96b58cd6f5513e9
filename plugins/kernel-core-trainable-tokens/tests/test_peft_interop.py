"""Trainable-tokens adapters move between kernel-core and Hugging Face ``peft`` (the oracle) with
the same logits, both ways, on untied and tied embeddings (a head sharing the embedding's weight
uses the same trained rows, saved under both modules, as peft does), and merge to peft's weights.

"Same" means no farther from peft than peft's merged model is from its own unmerged one on the
same adapter; for this method that floor is zero (rows are replaced, never summed), so ours must
be bit-equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel

from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import (
    assert_merges_as_peft,
    assert_mixed_batch,
    assert_ours_loads_in_peft,
    assert_peft_loads_in_ours,
    peft_made,
    peft_unloaded,
    quiet,
    randomise,
)
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama, token_ids
from kernel_core_trainable_tokens.layer import TrainableTokensLayer


def tied_llama() -> PreTrainedModel:
    return tiny_llama(tie_word_embeddings=True)


def tiny_gemma3() -> PreTrainedModel:
    """A 2-layer Gemma 3 text model: its embedding scales its output (``embed_scale``), its head is tied."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    return Gemma3ForCausalLM(config).eval()


def _peft_made(build: Callable[[], PreTrainedModel], fields: dict[str, Any], folder: Path, seed: int = 3) -> peft.PeftModel:
    """A peft model with a trainable-tokens adapter made with ``fields`` and randomised, saved to ``folder``."""
    return peft_made(build, peft.TrainableTokensConfig(**fields, init_weights=False), seed, folder)


CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    "input-embedding-default": (tiny_llama, {"token_indices": [3, 7, 60]}),
    "tied-head": (tied_llama, {"token_indices": [0, 5, 63]}),
    "gpt2-tied-head": (tiny_gpt2, {"token_indices": [2, 9, 40, 41]}),
    "gemma3-scaled-embedding": (tiny_gemma3, {"token_indices": [3, 7, 60]}),
    "regex": (tiny_llama, {"target_modules": r".*\.embed_tokens", "token_indices": [1, 2]}),
    "untied-head-only": (tiny_llama, {"target_modules": ["lm_head"], "token_indices": [10, 20, 30]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_loads_in_peft(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    ours = get_peft_model(build(), get_config("trainable_tokens", **fields)).eval()
    randomise(ours)
    assert_ours_loads_in_peft(ours, build, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= set(peft.TrainableTokensConfig().to_dict()), "adapter_config.json holds only keys peft's config has"


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_in_ours(case: str, tmp_path: Path) -> None:
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_peft_loads_in_ours(reference, build, tmp_path)
    ours.save_pretrained(tmp_path / "ours")
    theirs, mine = (load_file(str(folder / "adapter_model.safetensors")) for folder in (tmp_path, tmp_path / "ours"))
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
    ours_layers = sorted(name for name, module in ours.named_modules() if isinstance(module, TrainableTokensLayer))
    assert ours_layers == sorted(name for name, module in reference.named_modules() if type(module).__name__ == "TrainableTokensLayer")


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_weights_equal_peft(case: str, tmp_path: Path) -> None:
    """merge_and_unload gives peft's merged weights, a tied head keeps the embedding's weight, and
    merge then unmerge gives the base back exactly (the rows from before are put back)."""
    build, fields = CASES[case]
    reference = _peft_made(build, fields, tmp_path)
    ours = assert_merges_as_peft(reference, build, tmp_path)
    base = peft_unloaded(reference).state_dict()
    unloaded = ours.unload()
    for key, value in unloaded.state_dict().items():
        assert torch.equal(value, base[key]), f"{key} after unmerge"
    merged = quiet(lambda: PeftModel.from_pretrained(build(), tmp_path)).merge_and_unload()
    embeddings, head = merged.get_input_embeddings(), merged.get_output_embeddings()
    assert (head.weight is embeddings.weight) == merged.config.tie_word_embeddings


@pytest.mark.parametrize("build", [tiny_llama, tied_llama], ids=["untied", "tied"])
def test_a_training_step_gives_peft_s_gradients(build: Callable[[], PreTrainedModel]) -> None:
    """The trained rows get peft's gradient, through the embedding and, when tied, the head too."""
    fields = {"token_indices": [3, 7, 60]}
    reference = quiet(lambda: peft.get_peft_model(build(), peft.TrainableTokensConfig(**fields, init_weights=False)))
    ours = get_peft_model(build(), get_config("trainable_tokens", **fields))
    with torch.no_grad():
        ours.get_input_embeddings().trainable_tokens_delta["default"].copy_(reference.get_input_embeddings().trainable_tokens_delta["default"])
    gradients = []
    for model in (reference, ours):
        model.train()
        model(token_ids(), labels=token_ids()).loss.backward()
        gradients.append(model.get_input_embeddings().trainable_tokens_delta["default"].grad)
    assert gradients[1].abs().sum() > 0
    assert torch.equal(gradients[1], gradients[0])


def test_mixed_batch_rows_equal_each_adapter_alone(tmp_path: Path) -> None:
    """Two peft-made adapters (overlapping rows: allowed when they never act at once) and the base,
    one per row, in one forward, on a tied model: each row is what peft gives with that adapter
    alone, bit for bit."""
    fields = {"first": {"token_indices": [1, 2, 3, 50]}, "second": {"token_indices": [3, 9, 30]}}
    references = {name: _peft_made(tied_llama, fields[name], tmp_path / name, seed) for seed, name in enumerate(fields)}
    ours = assert_mixed_batch(tied_llama, references, tmp_path, floor=0.0)
    ours.delete_adapter("second")  # from the embedding's layer and the head's tied one
    assert ours.get_base_model().lm_head.adapter_names == ours.get_input_embeddings().adapter_names == ["first"]


def test_a_tied_head_targeted_too_is_tied_to_the_embedding(tmp_path: Path) -> None:
    """Targeting a tied head as well as the embedding gives the head a tied layer, as PEFT means to
    (PEFT 0.21 wraps its own layer in the tied one there, and its forward then fails): the model
    computes and saves as with the embedding alone."""
    fields = {"token_indices": [4, 8], "init_weights": False}
    torch.manual_seed(0)
    both = get_peft_model(tied_llama(), get_config("trainable_tokens", target_modules=["embed_tokens", "lm_head"], **fields))
    torch.manual_seed(0)
    alone = get_peft_model(tied_llama(), get_config("trainable_tokens", **fields))
    head = both.get_base_model().lm_head
    assert isinstance(head, TrainableTokensLayer) and head.source is both.get_input_embeddings()
    assert isinstance(head.base_layer, torch.nn.Linear)
    with torch.no_grad():
        assert torch.equal(both(token_ids()).logits, alone(token_ids()).logits)
    both.save_pretrained(tmp_path / "both")
    alone.save_pretrained(tmp_path / "alone")
    assert load_file(str(tmp_path / "both" / "adapter_model.safetensors")).keys() == load_file(str(tmp_path / "alone" / "adapter_model.safetensors")).keys()


def test_missing_targets_are_the_input_embedding() -> None:
    """target_modules=None targets the model's input embedding by its name, as peft saves it."""
    for build, name in ((tiny_llama, "model.embed_tokens"), (tiny_gpt2, "transformer.wte")):
        reference = quiet(lambda build=build: peft.get_peft_model(build(), peft.TrainableTokensConfig(token_indices=[1])))
        ours = get_peft_model(build(), get_config("trainable_tokens", token_indices=[1]))
        assert ours.peft_config["default"].target_modules == reference.peft_config["default"].target_modules == name
