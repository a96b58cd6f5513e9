"""AdaLoRA's training is PEFT's, step for step: the same tiny model is built twice, one wrapped
by ``peft`` (the oracle) and one by kernel-core with the same initial adapter, both trained on the
same batches with the same optimizer; after every step the loss (regulariser included), the
rank pattern and the masked ``lora_E`` values agree, bit for bit (the same float32
arithmetic in the same order).

The hook under test is the one ``kcore finetune`` and ``TunerTrainingCallback`` call:
``PeftModel.on_optimizer_step(step)``, after ``optimizer.step()`` and before ``zero_grad()``,
as PEFT asks of ``update_and_allocate(step)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from kernel_core.finetune.callbacks import TunerTrainingCallback
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import quiet
from kernel_core_sdk.tiny_models import tiny_gpt2, tiny_llama

OPTIONS: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, Any]]] = {
    # PEFT's init (E zero): A and B get no gradient until E moves, as in real runs.
    "default-init": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"], "init_r": 6, "target_r": 2, "total_step": 12}),
    "knobs": (
        tiny_llama,
        {"target_modules": r".*\.(q_proj|k_proj|gate_proj|o_proj)", "init_r": 5, "target_r": 3, "tinit": 2, "tfinal": 3,
         "deltaT": 2, "beta1": 0.7, "beta2": 0.9, "orth_reg_weight": 0.3, "lora_alpha": 16, "total_step": 12,
         "init_lora_weights": False},
    ),
    "conv1d": (lambda: tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), {"target_modules": ["c_attn", "c_fc"], "init_r": 4, "target_r": 1, "tinit": 1, "tfinal": 2,
                           "total_step": 10, "fan_in_fan_out": True, "init_lora_weights": False}),
}


def _batches(steps: int, vocab: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (2, 9), generator=generator) for _ in range(steps)]


def twin_models(build: Callable[[], PreTrainedModel], options: dict[str, Any], folder: Path) -> tuple[peft.PeftModel, PeftModel]:
    """peft's trainable AdaLoRA and ours, starting from the same adapter tensors."""
    torch.manual_seed(0)
    # peft adds its regulariser in its task models' forward only: a task_type is needed
    reference = quiet(lambda: peft.get_peft_model(build(), peft.AdaLoraConfig(task_type="CAUSAL_LM", **options)))
    reference.save_pretrained(str(folder))
    ours = PeftModel.from_pretrained(build(), folder, is_trainable=True)
    return reference.train(), ours.train()


def _lora_E(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> lora_E of the default adapter, for either side."""
    return {
        name.removeprefix("base_model.model.").removesuffix(".lora_E.default"): parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if name.endswith("lora_E.default")
    }


def _peft_pattern(reference: peft.PeftModel) -> dict[str, list[bool]] | None:
    pattern = reference.peft_config["default"].rank_pattern
    return None if pattern is None else {key.removesuffix(".default"): value for key, value in pattern.items()}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_training_steps_equal_peft(case: str, tmp_path: Path) -> None:
    build, options = OPTIONS[case]
    reference, ours = twin_models(build, options, tmp_path)
    optimizers = [torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05) for model in (reference, ours)]
    vocab = reference.get_base_model().config.vocab_size
    patterns_seen = 0
    for step, batch in enumerate(_batches(options["total_step"] + 2, vocab), start=1):
        losses = []
        for model, optimizer in zip((reference, ours), optimizers):
            loss = model(batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            if model is reference:
                model.base_model.update_and_allocate(step)
            else:
                model.on_optimizer_step(step)
            optimizer.zero_grad()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0, msg=f"loss at step {step}")
        assert ours.peft_config["default"].rank_pattern == _peft_pattern(reference), f"rank pattern at step {step}"
        patterns_seen += ours.peft_config["default"].rank_pattern is not None
        expected, got = _lora_E(reference), _lora_E(ours)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=f"{name}.lora_E at step {step}")
            assert torch.equal(got[name] == 0, expected[name] == 0), f"{name}: masked triplets differ at step {step}"
    pattern = ours.peft_config["default"].rank_pattern
    assert patterns_seen and pattern is not None
    assert sum(map(sum, pattern.values())) == options["target_r"] * len(pattern)  # the final budget


def test_regulariser_is_in_the_loss(tmp_path: Path) -> None:
    """The loss a training forward returns is the model's plus orth_reg_weight times the mean
    orthogonality error, as peft's; eval mode leaves it out here (peft adds it in eval too)."""
    build, options = OPTIONS["knobs"]
    reference, ours = twin_models(build, options, tmp_path)
    batch = _batches(1, reference.get_base_model().config.vocab_size)[0]
    trained = ours(batch, labels=batch).loss
    torch.testing.assert_close(trained, reference(batch, labels=batch).loss, rtol=0, atol=0)
    with torch.no_grad():
        plain = ours.eval()(batch, labels=batch).loss
    assert trained.item() - plain.item() > 0.01  # random A and B are far from orthogonal


def test_a_plain_trainer_allocates_through_the_callback(tmp_path: Path) -> None:
    """transformers' Trainer with TunerTrainingCallback runs the allocation after every optimizer
    step (gradient accumulation included): at the end the rank pattern holds the final budget,
    the pruned triplets' E are zero, and the saved file holds only the kept ranks."""
    options = {"target_modules": ["q_proj", "v_proj"], "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "total_step": 5}
    model = get_peft_model(tiny_llama(), get_config("adalora", **options))
    rows = [{"input_ids": row, "labels": row} for row in _batches(1, 64)[0].repeat(10, 1)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=5,
        learning_rate=0.05, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=rows, callbacks=[TunerTrainingCallback()]).train()
    pattern = model.peft_config["default"].rank_pattern
    assert pattern is not None and sum(map(sum, pattern.values())) == 2 * 4
    for name, E in _lora_E(model).items():
        kept = torch.tensor(pattern[f"{name}.lora_E"])
        assert torch.all(E[~kept] == 0) and torch.all(E[kept] != 0), name
    model.save_pretrained(tmp_path / "adapter")
    assert PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").peft_config["default"].rank_pattern == pattern
