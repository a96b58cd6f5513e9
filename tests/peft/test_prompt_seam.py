"""The prompt-learning seam of plugin API 1.4 (``kernel_core.contracts.prompt`` and the
``Tuner.model_inputs``/``generation_inputs`` hooks), through toy tuners: a virtual-token table
set to the embeddings of real tokens P, or a prefix table set to the base model's own keys and
values on P, makes the adapted model on x compute what the base model computes on P then x, in
forward, in training (loss and gradients) and in greedy ``generate`` with the cache; files,
disabling, merging and mixed batches behave as documented."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

from kernel_core.contracts.prompt import PromptLearningConfig
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core.plugins import Distribution, PluginManager
from kernel_core_sdk.conformance import PromptLearningConformance
from kernel_core_sdk.tiny_models import tiny_llama, token_ids

from . import toy_prompt

PREFIX = torch.tensor([[5, 17, 42, 8]])  # the real tokens P the tables stand for


@pytest.fixture(autouse=True)
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = PluginManager.from_environment()
    manager.register(toy_prompt, name="toy-prompt", distribution=Distribution("kc-toy-prompt", "1.0"))
    monkeypatch.setattr("kernel_core.peft.config.get_plugin_manager", lambda: manager)


def _as_prefix(method: str) -> PeftModel:
    """An adapter whose table stands for the tokens P: their embeddings, or the base model's
    keys and values on them (per layer, flattened as PEFT's prefix table)."""
    model = get_peft_model(tiny_llama(), get_config(method, num_virtual_tokens=PREFIX.shape[1]))
    base = tiny_llama()
    with torch.no_grad():
        if method == "toy-tokens":
            table = base.get_input_embeddings()(PREFIX)[0]
        else:
            cache = base(PREFIX, use_cache=True).past_key_values
            layers = [torch.cat([layer.keys, layer.values], dim=1) for layer in cache.layers]  # (1, 2*heads, n, d)
            table = torch.cat([kv[0].permute(1, 0, 2).flatten(1) for kv in layers], dim=1)
        model.base_model.prompt_encoder["default"].embedding.weight.copy_(table)
    return model


def _after_prefix(ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([PREFIX.expand(ids.shape[0], -1), ids], dim=1)


@pytest.mark.parametrize("method", ["toy-tokens", "toy-prefix"])
def test_forward_is_the_base_model_reading_the_prefix_first(method: str) -> None:
    ours, base, ids = _as_prefix(method).eval(), tiny_llama(), token_ids()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = base(_after_prefix(ids)).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
        positional = ours(ids, mask).logits
    keep = got.shape[1] - ids.shape[1]  # virtual tokens return their logits, as in PEFT; a prefix returns none
    assert keep == (PREFIX.shape[1] if method == "toy-tokens" else 0)
    torch.testing.assert_close(got[:, keep:], expected[:, PREFIX.shape[1]:], rtol=0, atol=1e-5)
    assert torch.equal(positional, got)


@pytest.mark.parametrize("method", ["toy-tokens", "toy-prefix"])
def test_greedy_generate_with_the_cache_is_the_base_model_continuing_the_prefix(method: str) -> None:
    ours, base, ids = _as_prefix(method).eval(), tiny_llama(), token_ids()
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    for use_cache in (True, False):  # the cache's first step, and every step without one
        expected = base.generate(_after_prefix(ids), attention_mask=torch.ones_like(_after_prefix(ids)), use_cache=use_cache, **settings)
        got = ours.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=use_cache, **settings)
        assert torch.equal(got[:, -6:], expected[:, -6:]), f"use_cache={use_cache}"
    assert "prepare_inputs_for_generation" not in ours.model.__dict__, "generate leaves the model as it was"


@pytest.mark.parametrize("method", ["toy-tokens", "toy-prefix"])
def test_training_loss_and_gradients_reach_only_the_table(method: str) -> None:
    ours, ids = _as_prefix(method).train(), token_ids()
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["base_model.prompt_encoder.default.embedding.weight"]
    output = ours(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    # virtual tokens' logits are returned, so the first token is predicted from the last one (as
    # in PEFT); a prefix returns none, so the first token is predicted from nothing
    unpredicted = PREFIX.shape[1] + (method == "toy-prefix")
    labels = torch.cat([torch.full((3, unpredicted), -100), ids[:, unpredicted - PREFIX.shape[1]:]], 1)
    with torch.no_grad():
        expected = tiny_llama()(_after_prefix(ids), labels=labels).loss
    torch.testing.assert_close(output.loss, expected, rtol=0, atol=1e-5)
    output.loss.backward()
    assert ours.base_model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["toy-tokens", "toy-prefix"])
def test_saved_as_peft_saves_prompt_learning_and_loaded_back(method: str, tmp_path: Path) -> None:
    ours = _as_prefix(method).eval()
    ours.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"]
    assert torch.equal(saved["prompt_embeddings"], ours.base_model.prompt_encoder["default"].embedding.weight)
    config = (tmp_path / "adapter_config.json").read_text()
    assert "target_modules" not in config and '"task_type": "CAUSAL_LM"' in config
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ours(input_ids=ids).logits)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("method", ["toy-tokens", "toy-prefix"])
def test_disabled_merged_mixed_and_deleted(method: str) -> None:
    ours, ids = _as_prefix(method).eval(), token_ids()
    with torch.no_grad(), ours.disable_adapter():
        assert torch.equal(ours(input_ids=ids).logits, tiny_llama()(ids).logits)
    with pytest.raises(ValueError, match="nothing to merge"):
        ours.merge_adapter()
    with pytest.raises(ValueError, match="one adapter per forward"):
        ours(input_ids=ids, adapter_names=["default"] * 3)
    ours.add_adapter("other", get_config(method, num_virtual_tokens=2))
    ours.delete_adapter("default")
    assert list(ours.base_model.prompt_encoder) == ["other"]


def test_a_cache_holding_entries_already_holds_the_prefix() -> None:
    """Decoding by hand: the first forward gets the prefix put in its cache, later ones keep it."""
    ours, base, ids = _as_prefix("toy-prefix").eval(), tiny_llama(), token_ids()
    with torch.no_grad():
        first = ours(input_ids=ids[:, :4], use_cache=True)
        second = ours(input_ids=ids[:, 4:], cache=first.past_key_values, use_cache=True)
        expected = base(_after_prefix(ids)).logits[:, -3:]
    assert isinstance(first.past_key_values, DynamicCache) and first.past_key_values.get_seq_length() == 4 + 7
    torch.testing.assert_close(second.logits, expected, rtol=0, atol=1e-5)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(Exception, match="target_modules"):
        get_config("toy-tokens", num_virtual_tokens=3, target_modules=["q_proj"])
    with pytest.raises(Exception, match="num_virtual_tokens"):
        get_config("toy-tokens", num_virtual_tokens=0)
    with pytest.raises(Exception, match="task_type"):
        get_config("toy-tokens", num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM")


class TestToyConformance(PromptLearningConformance):
    """The SDK's prompt-learning suite passes on the toy tuners (it is what the plugins run)."""

    @pytest.fixture(params=["toy-tokens", "toy-prefix"])
    def method(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return toy_prompt

    @pytest.fixture
    def plugin_name(self, method: str) -> str:
        return method

    @pytest.fixture
    def tuner_config(self, method: str) -> PromptLearningConfig:
        return get_config(method, num_virtual_tokens=3)  # type: ignore[return-value]

    # The toy module is its own implementation, so its entry point imports torch by design; the
    # real prompt-learning plugins' suites run this check. None removes the inherited test.
    test_entry_point_imports_no_torch = None
