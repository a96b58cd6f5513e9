"""One fine-tuning job end to end, what ``kcore finetune`` runs on each process: check the data and
the training arguments, load the model, wrap it with a fresh adapter, measure exact match, train with
:class:`~kernel_core.finetune.trainer.AdapterTrainer` (resuming from the last checkpoint if asked),
save the adapter, the trainer state and ``loss.png``, measure again.

Everything that can be checked without the model (training arguments, data files, the output
folder) is checked first, so a typo fails in seconds rather than after the model has loaded. Under
``torchrun``/``accelerate launch`` (or ``kcore finetune --nproc N``) every rank runs this; only the
main one prints, measures exact match and writes the final output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kernel_core.errors import CheckpointError, KernelCoreError
from kernel_core.finetune import adapter_options, arguments
from kernel_core.finetune.exact_match import ExactMatchResult, exact_match, load_exact_match_rows

if TYPE_CHECKING:
    from kernel_core.contracts.tuner import BaseTunerConfig

logger = logging.getLogger(__name__)

#: Settings a resumed run must share with the run that wrote the checkpoint, or its batches, data
#: order or updates would differ from the uninterrupted trajectory.
RESUME_MUST_MATCH = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "data_seed", "learning_rate",
    "weight_decay", "bf16", "fp16", "optim", "lr_scheduler_type", "world_size",
)


@dataclass
class FinetuneJob:
    """What to train, on what, and where the result goes (``kcore finetune``'s options).

    ``training_args`` are layers of ``TrainingArguments`` fields, ``(source, values)``, applied in
    order over kernel-core's defaults (:func:`kernel_core.finetune.arguments.kcore_defaults`);
    ``adapter_options`` are layers of the method's config fields, over its defaults
    (:func:`kernel_core.finetune.adapter_options.build`)."""

    model: str
    data: Path
    output: Path
    method: str = "lora"
    adapter_options: Sequence[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    max_len: int = 1024
    eval_data: Path | None = None
    eval_exact_match: Path | None = None
    max_new_tokens: int | None = None
    resume: bool = False
    streaming: bool = False
    packing: bool = False
    progress: bool = True
    training_args: Sequence[tuple[str, Mapping[str, Any]]] = field(default_factory=list)


@dataclass
class FinetuneReport:
    """What the job did: ``Trainer``'s log history, and the exact-match accuracy around training."""

    log_history: list[dict[str, Any]]
    global_step: int
    adapter: Path
    resumed_from: Path | None = None
    exact_match_before: ExactMatchResult | None = None
    exact_match_after: ExactMatchResult | None = None

    @property
    def losses(self) -> list[float]:
        """The training loss of each logged step, in order."""
        return [record["loss"] for record in self.log_history if "loss" in record]

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        """``(step, eval loss)`` of each evaluation, in order."""
        return [(record["step"], record["eval_loss"]) for record in self.log_history if "eval_loss" in record]


def training_arguments(job: FinetuneJob, eval_data: bool) -> Any:
    """The run's ``TrainingArguments``: kernel-core's defaults for this platform, then the job's layers."""
    from kernel_core.platforms import current_platform

    platform = current_platform()
    defaults = arguments.kcore_defaults()
    if platform.device().type == "cpu":
        defaults["use_cpu"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one rank of a launched run
        defaults["ddp_backend"] = platform.distributed_backend()
        if job.streaming:
            # each rank reads the stream and keeps its share of every global batch: the main rank
            # cannot hand out batches padded to different lengths (Accelerate's dispatch)
            defaults["accelerator_config"] = {"dispatch_batches": False}
    user = {key: value for _, values in job.training_args for key, value in values.items()}
    if eval_data and user.get("save_strategy") == "steps" and "eval_strategy" not in user:
        # the eval loss is measured at every checkpoint (and once more at the end)
        defaults |= {"eval_strategy": "steps", "eval_steps": user.get("save_steps")}
    layers = [("kernel-core defaults", defaults), *job.training_args]
    args = arguments.build(job.output, layers)
    if args.fp16 and (args.use_cpu or args.device.type == "cpu"):
        raise arguments.TrainingArgumentsError(
            "fp16 mixed precision needs a GPU: on the CPU, Accelerate would silently train in fp32 instead; "
            "use --precision bf16 (mixed precision the CPU runs) or fp32"
        )
    return args


def run_finetune(job: FinetuneJob, out: TextIO | None = None) -> FinetuneReport:
    """Run ``job``; the main process prints a short account of it to ``out`` (default stdout)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from kernel_core.finetune.callbacks import TunerTrainingCallback
    from kernel_core.finetune.data import DataCollator, load_training_data
    from kernel_core.finetune.plot import LOSS_PLOT, plot_losses
    from kernel_core.finetune.trainer import AdapterTrainer
    from kernel_core.models.resolve import resolve_model
    from kernel_core.peft import get_peft_model

    out = out or sys.stdout
    args = training_arguments(job, eval_data=job.eval_data is not None)
    config = adapter_options.build(job.method, job.adapter_options)
    main = args.process_index == 0
    say = (lambda text: print(text, file=out, flush=True)) if main else (lambda text: None)
    if job.packing and args.use_cache:
        raise arguments.TrainingArgumentsError(
            "--packing needs use_cache false: with a KV cache transformers ignores where packed rows end, and they would attend to each other"
        )
    if job.streaming and args.max_steps <= 0:
        raise KernelCoreError("--streaming reads the data as it trains, so the run's length must be given: --max-steps N")
    folder = resolve_model(job.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise KernelCoreError(f"the tokenizer of {folder} has neither a pad nor an EOS token to pad batches with")

    train_data = load_training_data(job.data, tokenizer, job.max_len, streaming=job.streaming, packing=job.packing)
    eval_data = load_training_data(job.eval_data, tokenizer, job.max_len) if job.eval_data else None
    em_rows = load_exact_match_rows(job.eval_exact_match, tokenizer) if job.eval_exact_match and main else None
    resume_from = _resume_point(job, get_last_checkpoint)
    if resume_from is not None:
        check_resumable(resume_from, args, config)

    import torch

    torch.manual_seed(args.seed)  # the adapter's initial weights depend on the seed alone
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    rows = f"{len(train_data)} training rows" if not job.streaming else "streamed training rows"
    say(
        f"{job.method} on {folder.name}: {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / total:.2f}%); {rows}; {args.world_size} process(es) on {args.device}, {precision(args)}"
    )

    report = FinetuneReport(log_history=[], global_step=0, adapter=job.output, resumed_from=resume_from)
    if em_rows is not None:
        report.exact_match_before = _exact_match(model.to(args.device), tokenizer, em_rows, job, args)
        label = "before training" if resume_from is None else f"at start (resuming from {resume_from.name})"
        say(f"exact match {label}: {_accuracy(report.exact_match_before)}")
    if resume_from is not None:
        say(f"resuming from {resume_from}")

    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=DataCollator(pad_token_id),
        processing_class=tokenizer,
        callbacks=[TunerTrainingCallback()],
    )
    bar = _use_progress_bar(trainer, job.progress and not args.disable_tqdm)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    finally:
        if bar is not None:
            bar.close()  # also on an error or Ctrl-C: what is printed next gets a line of its own
    if eval_data is not None and not _evaluated_at(trainer.state.log_history, trainer.state.global_step):
        trainer.evaluate()

    report.log_history = list(trainer.state.log_history)
    report.global_step = trainer.state.global_step
    if trainer.is_world_process_zero():
        # the state and the plot first: the adapter's config, written last, says the whole output is there
        trainer.save_state()
        plot_losses(trainer.state.log_history, job.output / LOSS_PLOT)
    trainer.save_model(str(job.output))

    if report.losses:
        say(f"trained {report.global_step} step{'' if report.global_step == 1 else 's'}: loss {report.losses[0]:.4f} -> {report.losses[-1]:.4f}")
    for step, loss in report.eval_losses[-1:]:
        say(f"eval loss at step {step}: {loss:.4f}")
    if em_rows is not None:
        report.exact_match_after = _exact_match(model, tokenizer, em_rows, job, args)
        say(f"exact match after training: {_accuracy(report.exact_match_after)}")
    say(f"adapter saved to {job.output} (with trainer_state.json and {LOSS_PLOT})")
    return report


def precision(args: Any) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how the forward computes under these arguments."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def check_resumable(checkpoint: Path, args: Any, adapter: BaseTunerConfig) -> None:
    """Refuse a resume from a damaged checkpoint, or whose settings (training arguments or adapter
    options) would leave the interrupted run's trajectory, naming the file or the setting."""
    from kernel_core.finetune.trainer import TRAINING_ARGS_JSON, check_checkpoint

    check_checkpoint(checkpoint, args.world_size)
    _check_same_adapter(checkpoint, adapter)
    saved = json.loads((checkpoint / TRAINING_ARGS_JSON).read_text(encoding="utf-8"))
    current = {**json.loads(args.to_json_string()), "world_size": args.world_size}
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"cannot resume from {checkpoint}: it was written with {key}={saved.get(key)!r}, this run has "
                f"{key}={current.get(key)!r}; the trajectory would not continue the interrupted run"
            )


def _check_same_adapter(checkpoint: Path, adapter: BaseTunerConfig) -> None:
    """The checkpoint's adapter must be of the same method with the same options as this run's
    (``inference_mode`` and ``base_model_name_or_path`` are filled in by saving and loading)."""
    from kernel_core.peft.config import config_from_dict, config_to_dict
    from kernel_core.peft.state_dict import CONFIG_NAME

    saved_dict = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))
    current_dict = config_to_dict(adapter)
    if str(saved_dict.get("peft_type")).upper() != current_dict["peft_type"]:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: its adapter is {saved_dict.get('peft_type')}, this run trains "
            f"{current_dict['peft_type']}; the trajectory would not continue the interrupted run"
        )
    saved, current = config_from_dict(saved_dict).to_dict(), adapter.to_dict()
    for key in sorted((saved.keys() | current.keys()) - set(adapter_options.OWNED)):
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"cannot resume from {checkpoint}: its adapter was made with {key}={saved.get(key)!r}, this run has "
                f"{key}={current.get(key)!r}; the trajectory would not continue the interrupted run"
            )


def _resume_point(job: FinetuneJob, last_checkpoint: Any) -> Path | None:
    """The checkpoint to resume from; refuses to mix a new run into a folder holding another's."""
    found = last_checkpoint(str(job.output)) if job.output.is_dir() else None
    if job.resume:
        if found is None:
            logger.warning("--resume: no checkpoint under %s, starting from scratch", job.output)
        return Path(found) if found is not None else None
    if found is not None:
        raise KernelCoreError(
            f"{job.output} already holds checkpoints of a run: pass --resume to continue it, or choose another --output"
        )
    return None


def _use_progress_bar(trainer: Any, show: bool) -> Any:
    """Our bar (loss and tokens/s in its postfix) instead of ``Trainer``'s, which prints a dict per
    log; the :class:`~kernel_core.finetune.callbacks.ProgressBar` added, if ``show``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from kernel_core.finetune.callbacks import ProgressBar

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not show:
        return None
    bar = ProgressBar()
    trainer.add_callback(bar)
    return bar


def _evaluated_at(log_history: Sequence[Mapping[str, Any]], step: int) -> bool:
    return any("eval_loss" in record and record.get("step") == step for record in log_history)


def _exact_match(model: Any, tokenizer: Any, rows: Sequence[tuple[list[int], str]], job: FinetuneJob, args: Any) -> ExactMatchResult:
    return exact_match(
        model,
        tokenizer,
        rows,
        batch_size=args.per_device_eval_batch_size,
        max_new_tokens=job.max_new_tokens,
        precision=precision(args),
        device=args.device,
    )


def _accuracy(result: ExactMatchResult) -> str:
    return f"{result.correct}/{result.total} ({100 * result.accuracy:.1f}%)"
