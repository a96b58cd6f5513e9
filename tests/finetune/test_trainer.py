"""``AdapterTrainer``: checkpoints hold the adapter (not the model) and no pickle of the arguments,
appear whole or not at all, a full disk is a clear error, and a resume continues the exact
trajectory of a run nobody stopped."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainingArguments, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from kernel_core.atomic import is_leftover
from kernel_core.errors import DiskFullError
from kernel_core.finetune.trainer import TRAINING_ARGS_JSON, AdapterTrainer
from kernel_core.peft import get_config, get_peft_model
from kernel_core.peft.state_dict import read_adapter
from kernel_core_sdk.tiny_models import tiny_llama, token_ids

from ..crash import killed_before_write
from .trajectory import assert_same_adapter, trajectory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHECKPOINT_FILES = {
    "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
    "trainer_state.json", TRAINING_ARGS_JSON,
}


def _trainer(output: Path, **overrides: Any) -> AdapterTrainer:
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), get_config("lora", r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    ids = token_ids(batch=12, length=8, seed=1)
    rows = [{"input_ids": row, "labels": row, "attention_mask": torch.ones_like(row)} for row in ids]
    settings = dict(
        output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6,
        learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=1, save_strategy="steps", save_steps=2,
        logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=3,
    ) | overrides
    return AdapterTrainer(model=model, args=TrainingArguments(**settings), train_dataset=rows, data_collator=default_data_collator)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run nobody stopped."""
    output = tmp_path_factory.mktemp("reference")
    trainer = _trainer(output)
    trainer.train()
    trainer.save_state()
    return output


def test_checkpoints_hold_the_adapter_and_no_pickled_arguments(reference: Path) -> None:
    names = sorted(path.name for path in reference.iterdir())
    assert names == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "trainer_state.json"]
    for checkpoint in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        assert {path.name for path in (reference / checkpoint).iterdir()} == CHECKPOINT_FILES
    config, tensors = read_adapter(reference / "checkpoint-6")
    assert config["peft_type"] == "LORA" and all(".lora_" in name for name in tensors)
    saved = json.loads((reference / "checkpoint-6" / TRAINING_ARGS_JSON).read_text())
    assert saved["learning_rate"] == 1e-2 and saved["world_size"] == 1


def test_resume_continues_the_exact_trajectory(reference: Path, tmp_path: Path) -> None:
    shutil.copytree(reference / "checkpoint-2", tmp_path / "checkpoint-2")
    trainer = _trainer(tmp_path)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    trainer.save_state()
    assert trajectory(tmp_path) == trajectory(reference)  # dropout included: the RNG state came back too
    for checkpoint in ("checkpoint-4", "checkpoint-6"):
        assert_same_adapter(tmp_path / checkpoint, reference / checkpoint)


def test_killed_at_any_write_point_a_checkpoint_is_whole_or_absent(reference: Path, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.train()  # writes checkpoint-2
    trainer.state.global_step = 4
    seen = set()
    for n in itertools.count(1):
        killed = killed_before_write(lambda: trainer._save_checkpoint(trainer.model, None), n)
        complete = sorted(path.name for path in tmp_path.iterdir() if not is_leftover(path))
        assert complete in (["checkpoint-2"], ["checkpoint-2", "checkpoint-4"]), complete
        seen.add(Path(get_last_checkpoint(str(tmp_path))).name)
        for name in complete:
            assert {path.name for path in (tmp_path / name).iterdir()} == CHECKPOINT_FILES
        if not killed:
            break
        shutil.rmtree(tmp_path / "checkpoint-4", ignore_errors=True)
    assert seen == {"checkpoint-2", "checkpoint-4"}
    trainer._save_checkpoint(trainer.model, None)  # the next save clears what the killed writers left
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]


def test_a_full_disk_while_checkpointing_names_the_checkpoint_and_leaves_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path, max_steps=4)
    real_save = torch.save

    def full_at_step_4(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoint-4" in str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_4)
    with pytest.raises(DiskFullError, match=rf"no space left on the device while writing {tmp_path / 'checkpoint-4'};"):
        trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
