"""One fine-tuning job end to end, what ``kcore finetune`` runs: check the data, load the model,
wrap it with a fresh adapter (or the last checkpoint's), measure exact match, train, save the
adapter, measure again.

Everything that can be checked without the model (data files, output folder) is checked first, so
a typo fails in a second rather than after the model has loaded.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from kernel_core.atomic import atomic_write_text
from kernel_core.errors import KernelCoreError
from kernel_core.finetune.checkpoint import CHECKPOINT_PREFIX, latest_checkpoint
from kernel_core.finetune.data import load_examples
from kernel_core.finetune.exact_match import ExactMatchResult, exact_match, load_exact_match_rows
from kernel_core.finetune.loop import TrainConfig, TrainResult, enable_gradient_checkpointing, train

logger = logging.getLogger(__name__)

#: Where the log of every step and evaluation is written, beside the final adapter.
TRAIN_LOG = "train_log.json"


@dataclass
class FinetuneJob:
    """What to train, on what, and where the result goes (``kcore finetune``'s options)."""

    model: str
    data: Path
    output: Path
    method: str = "lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    max_len: int = 1024
    gradient_checkpointing: bool = False
    eval_data: Path | None = None
    eval_exact_match: Path | None = None
    max_new_tokens: int | None = None
    resume: bool = False
    progress: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class FinetuneReport:
    """What the job did: the training log, and the exact-match accuracy around training."""

    result: TrainResult
    adapter: Path
    resumed_from: Path | None = None
    exact_match_before: ExactMatchResult | None = None
    exact_match_after: ExactMatchResult | None = None


def training_device() -> torch.device:
    """The device of the selected hardware platform (``KERNEL_CORE_PLATFORM`` can force one)."""
    from kernel_core.platforms import current_platform

    return current_platform().device()


def run_finetune(job: FinetuneJob, out: TextIO | None = None, device: torch.device | str | None = None) -> FinetuneReport:
    """Run ``job`` and print a short account of it to ``out`` (default stdout); the progress bar
    goes to stderr."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kernel_core.models.resolve import resolve_model
    from kernel_core.peft import PeftModel, get_config, get_peft_model

    out = out or sys.stdout
    folder = resolve_model(job.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise KernelCoreError(f"the tokenizer of {folder} has neither a pad nor an EOS token to pad batches with")

    examples = load_examples(job.data, tokenizer, job.max_len)
    eval_examples = load_examples(job.eval_data, tokenizer, job.max_len) if job.eval_data else None
    em_rows = load_exact_match_rows(job.eval_exact_match, tokenizer) if job.eval_exact_match else None
    resume_from = _resume_point(job)

    device = torch.device(device) if device is not None else training_device()
    torch.manual_seed(job.train.seed)  # the adapter's initial weights depend on the seed alone
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if job.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if resume_from is not None:
        model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
    else:
        config = get_config(
            job.method, r=job.r, lora_alpha=job.alpha, lora_dropout=job.dropout, target_modules=job.target_modules
        )
        model = get_peft_model(model, config)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(
        f"{job.method} on {folder.name}: {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / total:.2f}%); {len(examples)} training rows; device {device}, {job.train.precision}",
        file=out,
    )
    if resume_from is not None:
        print(f"resuming from {resume_from}", file=out)

    report = FinetuneReport(result=TrainResult(step=0), adapter=job.output, resumed_from=resume_from)
    if em_rows is not None:
        report.exact_match_before = _exact_match(model, tokenizer, em_rows, job, device)
        label = "before training" if resume_from is None else f"at resume ({resume_from.name})"
        print(f"exact match {label}: {_accuracy(report.exact_match_before)}", file=out)

    report.result = train(
        model,
        examples,
        job.train,
        pad_token_id=pad_token_id,
        output_dir=job.output,
        save_adapter=lambda target: model.save_pretrained(target),
        eval_examples=eval_examples,
        resume_from=resume_from,
        device=device,
        progress=job.progress,
    )
    # The log first: the adapter's config, written last, then says the whole output is there.
    atomic_write_text(job.output / TRAIN_LOG, json.dumps(report.result.log, indent=1) + "\n")
    model.save_pretrained(job.output)

    losses = report.result.losses
    if losses:
        steps = report.result.step
        print(f"trained {steps} step{'' if steps == 1 else 's'}: loss {losses[0]:.4f} -> {losses[-1]:.4f}", file=out)
    for step, loss in report.result.eval_losses[-1:]:
        print(f"eval loss at step {step}: {loss:.4f}", file=out)
    if em_rows is not None:
        report.exact_match_after = _exact_match(model, tokenizer, em_rows, job, device)
        print(f"exact match after training: {_accuracy(report.exact_match_after)}", file=out)
    print(f"adapter saved to {job.output}", file=out)
    return report


def _resume_point(job: FinetuneJob) -> Path | None:
    """The checkpoint to resume from; refuses to mix a new run into a folder holding another's."""
    found = latest_checkpoint(job.output)
    if job.resume:
        if found is None:
            logger.warning("--resume: no checkpoint under %s, starting from scratch", job.output)
        return found
    if job.output.is_dir() and any(p.name.startswith(CHECKPOINT_PREFIX) for p in job.output.iterdir()):
        raise KernelCoreError(
            f"{job.output} already holds checkpoints of a run: pass --resume to continue it, or choose another --output"
        )
    return None


def _exact_match(model: Any, tokenizer: Any, rows: Sequence[tuple[list[int], str]], job: FinetuneJob, device: torch.device) -> ExactMatchResult:
    return exact_match(
        model,
        tokenizer,
        rows,
        batch_size=job.train.batch_size,
        max_new_tokens=job.max_new_tokens,
        precision=job.train.precision,
        device=device,
    )


def _accuracy(result: ExactMatchResult) -> str:
    return f"{result.correct}/{result.total} ({100 * result.accuracy:.1f}%)"

