"""The training loop: AdamW, warm-up then cosine decay, gradient accumulation and clipping,
periodic eval loss and checkpoints, and resuming onto the exact trajectory of an uninterrupted run.

It works on any ``nn.Module`` that takes ``input_ids`` and ``attention_mask`` and returns an object
with ``.logits`` (a transformers causal LM, or a PEFT model wrapping one) and trains exactly the
parameters that require grad. Building the model (and loading a checkpoint's weights back into
it) is the caller's job: see :mod:`kernel_core.finetune.run`.

A *step* is one optimizer step: ``grad_accum`` batches of ``batch_size`` rows. The loss of a step
is the mean cross-entropy over every target token of those batches (each micro-batch's summed loss
is divided by the step's total token count), so the split into micro-batches does not change it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kernel_core.errors import CheckpointError, KernelCoreError
from kernel_core.finetune import checkpoint
from kernel_core.finetune.data import IGNORE_INDEX, Example, chunks, collate, epoch_batches
from kernel_core.finetune.precision import autocast, grad_scaler

logger = logging.getLogger(__name__)

#: Settings a resumed run must share with the run that wrote the checkpoint, or its batches, data
#: order or updates would differ from the uninterrupted trajectory.
RESUME_MUST_MATCH = ("batch_size", "grad_accum", "seed", "learning_rate", "weight_decay", "precision", "num_examples")


@dataclass
class TrainConfig:
    """The optimisation settings (see ``kcore finetune --help`` for each one's meaning)."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    save_steps: int | None = None
    seed: int = 0
    precision: str = "fp32"

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps in one pass over ``num_examples`` rows (a short last step included)."""
        return math.ceil(math.ceil(num_examples / self.batch_size) / self.grad_accum)

    def total_steps(self, num_examples: int) -> int:
        """``max_steps`` when set (epochs are repeated as needed), else ``epochs`` passes."""
        return self.max_steps if self.max_steps is not None else self.epochs * self.steps_per_epoch(num_examples)

    def num_warmup_steps(self, total_steps: int) -> int:
        """``warmup_steps`` when set, else ``warmup_ratio`` of the run, rounded up."""
        return self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total_steps)


@dataclass
class TrainResult:
    """What a run did: its last step and one log record per step and per evaluation."""

    step: int
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        """The training loss of each step, in order."""
        return [record["loss"] for record in self.log if "loss" in record]

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        """``(step, eval loss)`` of each evaluation, in order."""
        return [(record["step"], record["eval_loss"]) for record in self.log if "eval_loss" in record]


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations during backward instead of keeping them: less memory,
    about one more forward of compute. Non-reentrant checkpointing needs no input that requires
    grad, so it works with a frozen base model and trainable adapters."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise KernelCoreError(f"{type(model).__name__} does not support gradient checkpointing")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions whose label is not ignored (computed in
    fp32 whatever the logits' dtype)."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str, device: torch.device) -> torch.Tensor:
    with autocast(precision, device):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    batch_size: int,
    pad_token_id: int,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> float:
    """Mean cross-entropy per target token over ``examples`` (dropout off), the number to watch for
    over-fitting; the model is put back in training mode if it was in it."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for group in chunks(list(examples), batch_size):
            batch = _to(collate(group, pad_token_id), device)
            total += token_loss_sum(_forward_logits(model, batch, precision, device), batch["labels"]).item()
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def train(
    model: torch.nn.Module,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    pad_token_id: int,
    output_dir: str | os.PathLike[str],
    save_adapter: Callable[[Path], None] | None = None,
    eval_examples: Sequence[Example] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``examples``.

    Every ``config.save_steps`` steps the eval loss is measured (when ``eval_examples`` are given)
    and a checkpoint is written under ``output_dir`` (weights through ``save_adapter``, by default
    ``model.save_pretrained``). With ``resume_from``, the model must already hold that
    checkpoint's weights; the optimizer, scheduler, loss scaler, RNG and step are restored from it,
    so the following steps are those an uninterrupted run would take. ``on_step`` sees each step's
    log record (after any checkpoint of that step is written).
    """
    from transformers import get_cosine_schedule_with_warmup

    device = torch.device(device)
    examples = list(examples)
    if not examples:
        raise KernelCoreError("no training examples")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise KernelCoreError("the model has no trainable parameter")
    names, params = [name for name, _ in named], [p for _, p in named]
    save_adapter = save_adapter or (lambda folder: model.save_pretrained(folder))

    total_steps = config.total_steps(len(examples))
    steps_per_epoch = config.steps_per_epoch(len(examples))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.num_warmup_steps(total_steps), total_steps)
    scaler = grad_scaler(config.precision, device)
    run = {**{key: value for key, value in asdict(config).items() if key in RESUME_MUST_MATCH}, "num_examples": len(examples)}

    step, log = 0, []
    if resume_from is not None:
        state = checkpoint.load_training_state(resume_from)
        _check_resumable(state, run, names, resume_from)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if scaler is not None and state.scaler is not None:
            scaler.load_state_dict(state.scaler)
        checkpoint.set_rng_state(state.rng)
        step, log = state.step, list(state.log)
    else:
        torch.manual_seed(config.seed)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
    started, seen_tokens = time.perf_counter(), 0
    epoch_cache: tuple[int, list[list[int]]] | None = None
    try:
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            if epoch_cache is None or epoch_cache[0] != epoch:
                epoch_cache = (epoch, epoch_batches(len(examples), config.batch_size, config.seed, epoch))
            group = epoch_cache[1][index * config.grad_accum : (index + 1) * config.grad_accum]
            micro = [collate([examples[i] for i in batch], pad_token_id) for batch in group]
            targets = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in micro)
            step_loss = 0.0
            for batch in micro:
                batch = _to(batch, device)
                loss = token_loss_sum(_forward_logits(model, batch, config.precision, device), batch["labels"]) / targets
                (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += loss.item()
                seen_tokens += int(batch["attention_mask"].sum())
            if scaler is not None:
                scaler.unscale_(optimizer)
            max_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            learning_rate = scheduler.get_last_lr()[0]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            record = {"step": step, "epoch": epoch, "loss": step_loss, "lr": learning_rate, "grad_norm": grad_norm, "tokens": targets}
            log.append(record)
            tokens_per_s = seen_tokens / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_s:.0f}")
            bar.update(1)
            if config.save_steps and step % config.save_steps == 0:
                if eval_examples:
                    log.append(_eval_record(model, eval_examples, config, pad_token_id, device, step, bar))
                state = checkpoint.TrainingState(
                    step=step,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None,
                    rng=checkpoint.rng_state(),
                    trainable_parameters=names,
                    run=run,
                    log=log,
                )
                checkpoint.save_checkpoint(output_dir, state, save_adapter)
            if on_step is not None:
                on_step(record)
    finally:
        bar.close()
    if eval_examples and not (log and "eval_loss" in log[-1] and log[-1]["step"] == step):
        log.append(_eval_record(model, eval_examples, config, pad_token_id, device, step, None))
    return TrainResult(step=step, log=log)


def _eval_record(
    model: torch.nn.Module,
    eval_examples: Sequence[Example],
    config: TrainConfig,
    pad_token_id: int,
    device: torch.device,
    step: int,
    bar: Any,
) -> dict[str, Any]:
    loss = evaluate_loss(
        model, eval_examples, batch_size=config.batch_size, pad_token_id=pad_token_id, precision=config.precision, device=device
    )
    message = f"step {step}: eval loss {loss:.4f}"
    if bar is not None and not bar.disable:
        bar.write(message)
    else:
        logger.info(message)
    return {"step": step, "eval_loss": loss}


def _check_resumable(state: checkpoint.TrainingState, run: dict[str, Any], names: list[str], folder: Any) -> None:
    for key, value in run.items():
        if key in state.run and state.run[key] != value:
            raise CheckpointError(
                f"cannot resume from {folder}: it was written with {key}={state.run[key]!r}, this run has "
                f"{key}={value!r}; the trajectory would not continue the interrupted run"
            )
    if state.trainable_parameters != names:
        raise CheckpointError(
            f"cannot resume from {folder}: its trainable parameters ({len(state.trainable_parameters)}) are not "
            f"this model's ({len(names)}); was it written with other --method/--r/--target-modules?"
        )
