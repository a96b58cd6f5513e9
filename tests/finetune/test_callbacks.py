"""The progress bar shows the last loss, learning rate and training tokens per second, writes eval
losses above itself, and only on the main process."""

from __future__ import annotations

from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from kernel_core.finetune.callbacks import ProgressBar


def _state(main: bool = True) -> TrainerState:
    state = TrainerState(max_steps=4, is_world_process_zero=main)
    state.num_input_tokens_seen = 0
    return state


def test_bar_postfix_has_loss_learning_rate_and_tokens_per_second(tmp_path: Any, capsys: Any) -> None:
    args, control, state = TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerControl(), _state()
    bar = ProgressBar()
    bar.on_train_begin(args, state, control)
    state.global_step, state.num_input_tokens_seen = 1, 512
    bar.on_step_end(args, state, control)
    bar.on_log(args, state, control, logs={"loss": 1.23456, "learning_rate": 2e-4})
    postfix = bar.bar.postfix
    assert "loss=1.2346" in postfix and "lr=2.00e-04" in postfix and "tok_s=" in postfix
    assert float(postfix.split("tok_s=")[1].split(",")[0]) > 0
    bar.on_log(args, state, control, logs={"eval_loss": 0.5})
    bar.close()
    assert "step 1: eval loss 0.5000" in capsys.readouterr().err


def test_no_bar_on_other_ranks(tmp_path: Any) -> None:
    args, control, state = TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerControl(), _state(main=False)
    bar = ProgressBar()
    bar.on_train_begin(args, state, control)
    bar.on_log(args, state, control, logs={"loss": 1.0})
    assert bar.bar is None
