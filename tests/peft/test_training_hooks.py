"""The tuner training hooks (plugin API 1.2): ``Tuner.on_optimizer_step`` runs after every optimizer
step of a plain transformers ``Trainer`` given ``TunerTrainingCallback``, with the gradients still in
place, and ``Tuner.training_loss`` is added to the loss of a training forward with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainingArguments

from kernel_core.finetune.callbacks import TunerTrainingCallback
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.tiny_models import tiny_llama, token_ids


def _model() -> PeftModel:
    torch.manual_seed(0)
    return get_peft_model(tiny_llama(), get_config("lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def _tuner(model: PeftModel) -> Any:
    return model._methods[model.active_adapter].tuner


def _rows(count: int) -> list[dict[str, torch.Tensor]]:
    ids = token_ids(batch=count, length=8, seed=3)
    return [{"input_ids": row, "labels": row} for row in ids]


def test_optimizer_step_hook_runs_each_step_with_gradients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    seen: list[tuple[int, bool]] = []

    def hook(self: Any, peft_model: PeftModel, adapter_name: str, step: int) -> None:
        grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
        # LoRA's B starts at zero, so only some gradients are non-zero at the first step
        present = all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        seen.append((step, adapter_name == "default" and present))

    monkeypatch.setattr(type(_tuner(model)), "on_optimizer_step", hook)
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=_rows(12), callbacks=[TunerTrainingCallback()]).train()
    assert seen == [(1, True), (2, True), (3, True)]


def test_inference_adapters_get_no_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    model.peft_config["default"] = model.peft_config["default"].model_copy(update={"inference_mode": True})
    monkeypatch.setattr(type(_tuner(model)), "on_optimizer_step", lambda *args: pytest.fail("hook ran for an inference adapter"))
    model.on_optimizer_step(1)


def test_training_loss_term_is_added_only_while_training_with_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    ids = token_ids(batch=2, length=6, seed=5)
    model.eval()
    plain = model(input_ids=ids, labels=ids).loss
    monkeypatch.setattr(type(_tuner(model)), "training_loss", lambda self, peft_model, name: torch.tensor(0.25))
    assert torch.equal(model(input_ids=ids, labels=ids).loss, plain)  # eval: no term
    model.train()
    assert torch.allclose(model(input_ids=ids, labels=ids).loss, plain + 0.25)
    assert model(input_ids=ids).loss is None  # no labels: no loss to add to


def test_plain_trainer_measures_the_eval_loss(tmp_path: Path) -> None:
    """``Trainer`` finds the label column from the model class's forward signature."""
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True)
    metrics = Trainer(model=_model(), args=arguments, eval_dataset=_rows(4)).evaluate()
    assert metrics["eval_loss"] > 0


def _arguments(tmp_path: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True,
    )


def test_callback_given_the_peft_model_runs_its_hooks_while_a_trainer_trains_the_model_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """How TRL's ``SFTTrainer`` trains an adapter: it is handed ``get_base_model()``, the transformers
    model holding the adapter layers, so the callback is given the ``PeftModel`` itself."""
    model = _model()
    steps: list[int] = []
    monkeypatch.setattr(type(_tuner(model)), "on_optimizer_step", lambda self, peft_model, name, step: steps.append(step))
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    inner = model.get_base_model()
    assert inner is model.base_model.model
    Trainer(model=inner, args=_arguments(tmp_path), train_dataset=_rows(4), callbacks=[TunerTrainingCallback(model)]).train()
    assert steps == [1, 2]
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert changed and all("lora_" in name for name in changed)


def test_callback_refuses_a_trainer_without_a_peft_model(tmp_path: Path) -> None:
    """Without a PeftModel the hooks would silently not run; training does not start."""
    plain = tiny_llama()
    with pytest.raises(TypeError, match="the Trainer trains a LlamaForCausalLM.*TunerTrainingCallback\\(peft_model\\)"):
        Trainer(model=plain, args=_arguments(tmp_path), train_dataset=_rows(4), callbacks=[TunerTrainingCallback()]).train()


def test_callback_refuses_a_peft_model_the_trainer_does_not_train(tmp_path: Path) -> None:
    other = _model()
    with pytest.raises(ValueError, match="neither the model the Trainer trains"):
        Trainer(model=_model(), args=_arguments(tmp_path), train_dataset=_rows(4), callbacks=[TunerTrainingCallback(other)]).train()
