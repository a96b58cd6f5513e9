"""``TrainerCallback``s kernel-core adds to a ``Trainer``: its tuners' training hooks, a progress bar
that shows what a user watches, and the loss plot at the end.

:class:`TunerTrainingCallback` is the one a user's own ``Trainer`` (or TRL's ``SFTTrainer``) needs to
train any kernel-core adapter the way ``kcore finetune`` does: a method whose adapter changes during
training (AdaLoRA reallocating ranks) does so from its tuner's ``on_optimizer_step`` hook, which
this callback calls after every optimizer step, gradients still in place. A trainer that must be
handed the transformers model inside the adapter wrapper (TRL's ``SFTTrainer``) is given
``peft_model.get_base_model()``, and the callback the wrapper: ``TunerTrainingCallback(peft_model)``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kernel_core.finetune.plot import LOSS_PLOT, plot_losses
from kernel_core.peft import PeftModel


class TunerTrainingCallback(TrainerCallback):
    """Calls ``PeftModel.on_optimizer_step`` (each training adapter's tuner hook) after every
    optimizer step; pass it to any ``Trainer`` that trains a :class:`kernel_core.peft.PeftModel`,
    or give it the ``PeftModel`` whose transformers model the trainer trains.

    Training starts only if there is a ``PeftModel`` to call: without one the hooks would be
    skipped without a word, and a method that changes its adapter as it trains would not."""

    def __init__(self, model: PeftModel | None = None) -> None:
        self.model = model

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._peft_model(kwargs.get("model"))

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._peft_model(kwargs.get("model")).on_optimizer_step(state.global_step + 1)  # Trainer counts the step after this callback

    def _peft_model(self, trained: Any) -> PeftModel:
        if self.model is None:
            if not isinstance(trained, PeftModel):
                raise TypeError(
                    f"TunerTrainingCallback needs a kernel_core.peft.PeftModel, but the Trainer trains a {type(trained).__name__}: "
                    "give the callback the PeftModel it belongs to, TunerTrainingCallback(peft_model)"
                )
            return trained
        if not isinstance(self.model, PeftModel):
            raise TypeError(f"TunerTrainingCallback needs a kernel_core.peft.PeftModel, got a {type(self.model).__name__}")
        if trained is not self.model and trained is not self.model.get_base_model():
            raise ValueError("TunerTrainingCallback was given a PeftModel that is neither the model the Trainer trains nor the one inside it")
        return self.model


class ProgressBar(TrainerCallback):
    """One bar per run on the main process: steps, and in its postfix the last loss, the learning
    rate and training tokens per second (``include_num_input_tokens_seen``); eval results are
    written above it."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.started = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step", dynamic_ncols=True)
            self.started, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            seconds = max(time.perf_counter() - self.started, 1e-9)
            tokens = (state.num_input_tokens_seen - self.tokens_at_start) / seconds
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0.0):.2e}", tok_s=f"{tokens:.0f}")
        if "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}", file=sys.stderr)  # with the bar

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the bar, on a line of its own; ``Trainer`` calls no callback when training stops on
        an error or Ctrl-C, so the caller closes it then, before saying what happened."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LossPlotCallback(TrainerCallback):
    """Writes ``loss.png`` (train and eval loss by step) into the output folder when training ends."""

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            plot_losses(state.log_history, Path(args.output_dir) / LOSS_PLOT)
