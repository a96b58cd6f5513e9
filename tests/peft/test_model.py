"""PeftModel's adapter operations on a tiny Llama with LoRA: several adapters, switching,
disabling, merging, unloading, mixed batches, and training with transformers' Trainer."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from transformers import Trainer, TrainingArguments

from kernel_core.contracts.tuner import TunerLayer
from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft import BASE_ADAPTER, PeftModel, get_config, get_peft_model
from kernel_core_sdk.tiny_models import tiny_llama, token_ids


def _logits(model: torch.nn.Module, ids: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids() if ids is None else ids, **kwargs).logits


@pytest.fixture
def model() -> PeftModel:
    """Adapters "a" (active) and "b", random so each changes the output differently."""
    peft_model = get_peft_model(tiny_llama(), get_config("lora", r=4, target_modules="all-linear", init_lora_weights=False), "a")
    peft_model.add_adapter("b", get_config("lora", r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, modules_to_save=["lm_head"]))
    with torch.no_grad():
        peft_model.model.lm_head.modules_to_save["b"].weight.mul_(1.5)
    return peft_model.eval()


@pytest.fixture
def base_logits() -> torch.Tensor:
    return _logits(tiny_llama())


def test_a_new_lora_starts_as_the_base_model(base_logits: torch.Tensor) -> None:
    peft_model = get_peft_model(tiny_llama(), get_config("lora", target_modules="all-linear"))
    torch.testing.assert_close(_logits(peft_model), base_logits)


def test_only_the_active_adapter_trains(model: PeftModel) -> None:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".a." in name for name in trainable), sorted(trainable)[:5]
    model.set_adapter("b")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save.b" in name for name in trainable)
    assert all(".b." in name for name in trainable), sorted(trainable)[:5]
    count, total = model.get_nb_trainable_parameters()
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad) and 0 < count < total


def test_switching_adapters_switches_the_output(model: PeftModel, base_logits: torch.Tensor) -> None:
    with_a = _logits(model)
    model.set_adapter("b")
    with_b = _logits(model)
    assert not torch.allclose(with_a, with_b) and not torch.allclose(with_a, base_logits)
    with model.disable_adapter():
        torch.testing.assert_close(_logits(model), base_logits)
    torch.testing.assert_close(_logits(model), with_b)


def test_mixed_batch_equals_each_row_alone(model: PeftModel, base_logits: torch.Tensor) -> None:
    ids = token_ids(batch=4)
    rows = ["a", BASE_ADAPTER, "b", "a"]
    alone = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        alone[name] = _logits(model, ids)
    with model.disable_adapter():
        alone[BASE_ADAPTER] = _logits(model, ids)

    mixed = _logits(model, ids, adapter_names=rows)

    for row, name in enumerate(rows):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-6, rtol=0, msg=lambda m, row=row: f"row {row}: {m}")


def test_mixed_batch_runs_one_call_per_adapter_group(model: PeftModel) -> None:
    layer = model.model.model.layers[0].self_attn.q_proj
    with mock.patch.object(type(layer), "adapter_output", autospec=True, side_effect=type(layer).adapter_output) as spy:
        _logits(model, token_ids(batch=5), adapter_names=["a", "b", "a", BASE_ADAPTER, "b"])
    calls = [call for call in spy.call_args_list if call.args[0] is layer]
    assert sorted(call.args[1] for call in calls) == ["a", "b"]
    assert [call.args[2].shape[0] for call in sorted(calls, key=lambda c: c.args[1])] == [2, 2]


def test_mixed_generate_matches_per_adapter_generate(model: PeftModel) -> None:
    ids = token_ids(batch=3, length=5)
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 63}
    rows = ["b", "a", BASE_ADAPTER]
    mixed = model.generate(input_ids=ids, adapter_names=rows, **options)
    for row, name in enumerate(rows):
        if name == BASE_ADAPTER:
            with model.disable_adapter():
                alone = model.generate(input_ids=ids[row : row + 1], **options)
        else:
            model.set_adapter(name)
            alone = model.generate(input_ids=ids[row : row + 1], **options)
        assert mixed[row].tolist() == alone[0].tolist(), f"row {row} ({name})"


def test_mixed_batch_refuses_unknown_names_and_wrong_lengths(model: PeftModel) -> None:
    with pytest.raises(ValueError, match="unknown adapter.*'zzz'"):
        _logits(model, token_ids(batch=2), adapter_names=["a", "zzz"])
    with pytest.raises(ValueError, match="3 entries but the batch has 2 rows"):
        _logits(model, token_ids(batch=2), adapter_names=["a", "a", "b"])
    assert all(layer.row_adapters is None for layer in model.modules() if isinstance(layer, TunerLayer))


def test_merge_unmerge_and_merge_and_unload(model: PeftModel, base_logits: torch.Tensor) -> None:
    unmerged = _logits(model)
    model.merge_adapter()
    assert all(layer.merged for layer in model.modules() if isinstance(layer, TunerLayer) and "a" in layer.adapter_names)
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge"):
        _logits(model, adapter_names=["a"] * 3)
    model.unmerge_adapter()
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=0)

    plain = model.merge_and_unload()
    assert not any(isinstance(module, TunerLayer) for module in plain.modules())
    torch.testing.assert_close(_logits(plain), unmerged, atol=1e-5, rtol=0)


def test_merge_and_unload_keeps_the_active_modules_to_save_copy(model: PeftModel) -> None:
    model.set_adapter("b")
    expected = _logits(model)
    torch.testing.assert_close(_logits(model.merge_and_unload()), expected, atol=1e-5, rtol=0)


def test_unload_returns_the_base_model(model: PeftModel, base_logits: torch.Tensor) -> None:
    model.merge_adapter()
    plain = model.unload()
    assert not any(isinstance(module, TunerLayer) for module in plain.modules())
    torch.testing.assert_close(_logits(plain), base_logits, atol=1e-5, rtol=0)


def test_delete_adapter(model: PeftModel) -> None:
    model.set_adapter("b")
    model.delete_adapter("b")
    assert list(model.peft_config) == ["a"] and model.active_adapter == "a"
    assert not any(".b." in name for name, _ in model.named_parameters())
    assert not any(isinstance(module, TunerLayer) and not module.adapter_names for module in model.modules())
    # lm_head was wrapped for "b" only: it is a plain Linear again
    assert type(model.model.lm_head) is torch.nn.Linear
    with pytest.raises(ValueError, match="unknown adapter"):
        model.delete_adapter("b")


def test_adapter_names_and_methods_are_checked(model: PeftModel) -> None:
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("a", get_config("lora", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="cannot name an adapter"):
        model.add_adapter(BASE_ADAPTER, get_config("lora", target_modules=["q_proj"]))
    model.model.config.model_type = "made_up"
    with pytest.raises(InvalidAdapterConfigError, match=r"lora has no default target_modules for model type 'made_up' .*set target_modules"):
        model.add_adapter("c", get_config("lora"))


def test_trains_with_transformers_trainer(tmp_path: object) -> None:
    """The wrapped model is an ordinary torch module to ``Trainer``: the adapter learns, the
    base does not move."""
    peft_model = get_peft_model(tiny_llama(), get_config("lora", r=4, lora_alpha=8, target_modules="all-linear"))
    base_before = {n: p.clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    ids = token_ids(batch=1, length=8, seed=4).repeat(16, 1)  # one sequence to memorise
    data = [{"input_ids": row, "labels": row} for row in ids]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=3, learning_rate=2e-2,
        save_strategy="no", report_to=[], logging_steps=1, use_cpu=True, seed=0,
    )
    trainer = Trainer(model=peft_model, args=arguments, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1, losses
    for name, parameter in peft_model.named_parameters():
        if name in base_before:
            assert torch.equal(parameter, base_before[name]), f"{name} moved"


def test_unload_gives_the_original_modules_to_save_module_back_as_peft_does(model: PeftModel) -> None:
    """As peft 0.22's ``unload`` (older peft kept the active adapter's trained copy)."""
    model.set_adapter("b")
    original_head = model.model.lm_head.original_module
    plain = model.unload()
    assert not any(isinstance(module, TunerLayer) for module in plain.modules())
    assert plain.lm_head is original_head


def test_merge_and_unload_keeps_the_merged_adapter_s_modules_to_save_copy(model: PeftModel) -> None:
    """The copy of the adapter merged, active or not, as peft 0.22's ``merge_and_unload(adapter_names)``."""
    trained_head = model.model.lm_head.modules_to_save["b"]
    assert model.active_adapter == "a"
    assert model.merge_and_unload(["b"]).lm_head is trained_head
