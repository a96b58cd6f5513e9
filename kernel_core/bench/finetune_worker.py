"""One configuration of ``kcore bench finetune`` (one library, gradient checkpointing on or off, one
or several processes), run in a process of its own so that its peak RSS is its own:
``resource.getrusage`` reports the high-water mark of the whole process, which no configuration run
before it may have raised.

    python -m kernel_core.bench.finetune_worker --model FOLDER --side peft --gradient-checkpointing on \\
        --steps 20 --out result.json

Both sides train the same thing under transformers' ``Trainer``, with the same ``TrainingArguments``:
our LoRA under :class:`~kernel_core.finetune.trainer.AdapterTrainer` (what ``kcore finetune`` runs),
``peft``'s LoRA under the plain ``Trainer``. The same base weights (one folder, fp32), the same rows
(``batch_size`` sequences of token ids drawn from ``--seed``, labels equal to the inputs, so every
step trains on all of them), the same collator, and LoRA with the same init
(``torch.manual_seed(seed)`` right before wrapping; both libraries draw the LoRA A matrices in
module order). ``peft`` is imported only for the ``peft`` side.

With ``--adapter FOLDER`` (``kcore bench finetune --method M``), both sides instead load the
adapter saved there (any method; made once by :mod:`kernel_core.bench.finetune_init`) as trainable,
ours with :meth:`kernel_core.peft.PeftModel.from_pretrained`, peft's with its own, so both start
from the same weights; ``--r`` and ``--lora-alpha`` are then unused (the adapter's config says all).

Under a launcher (``torchrun``, ``--nproc``), every rank runs this with ``batch_size / nproc``
sequences, so the global batch is the one process's, and writes its own result file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kernel_core.errors import KernelCoreError

OURS = "kernel-core"
PEFT = "peft"
SIDES = (OURS, PEFT)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one configuration's run depends on; the report records it beside the result."""

    model: str
    side: str
    gradient_checkpointing: bool
    steps: int = 20
    #: Sequences per optimizer step over all processes (each of ``nproc`` ranks takes its share).
    batch_size: int = 8
    seq_len: int = 256
    r: int = 16
    lora_alpha: int = 32
    lr: float = 1e-4
    seed: int = 0
    threads: int | None = None
    nproc: int = 1
    #: A PEFT-format adapter folder both sides load trainable instead of making LoRA themselves.
    adapter: str | None = None
    #: The method's name, for the label only (the adapter's config says which method it is).
    method: str | None = None

    @property
    def label(self) -> str:
        processes = f", {self.nproc} processes (DDP)" if self.nproc > 1 else ""
        method = f"{self.method}, " if self.method else ""
        return f"{method}{self.side}, GC {'on' if self.gradient_checkpointing else 'off'}{processes}"

    def argv(self) -> list[str]:
        """The command-line arguments that make :func:`main` run this configuration."""
        args = []
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "on" if value else "off"
            args += [f"--{item.name.replace('_', '-')}", str(value)]
        return args


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from ``on_step_begin`` to ``on_step_end``: forward, backward
    (the gradient all-reduce under DDP), clipping, optimizer step; not the data loading before it nor
    the logging after it. Beside the wall time, the process's CPU time (all its threads): on a
    machine other processes load, it moves much less than the wall time, which waits for them.
    With ``out``, the main process prints each step's loss and seconds there."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label, self.total, self.out = label, total, out
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._started = self._cpu_started = 0.0

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._started, self._cpu_started = time.perf_counter(), time.process_time()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._started)
        self.cpu_seconds.append(time.process_time() - self._cpu_started)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        if self.out is not None and state.is_world_process_zero and logs and "loss" in logs:
            print(
                f"[{self.label}] step {state.global_step}/{self.total}: loss {logs['loss']:.6f}, {self.seconds[-1]:.2f} s",
                file=self.out, flush=True,
            )


def train(config: WorkerConfig, quiet: bool = False) -> dict[str, Any]:
    """Train ``config`` with ``Trainer`` and return the result: every step's loss and seconds, the
    median step time (the first step excluded: it pays one-off allocations) and the process's peak
    RSS at the end (model loading included)."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging

    world = _check(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    logging.disable_progress_bar()  # stderr carries this benchmark's progress
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32, use_safetensors=True)
    rows = token_rows(config, model.config.vocab_size)
    torch.manual_seed(config.seed)  # the LoRA init: the same draws on both sides
    wrapped = _wrap(model, config) if config.adapter is None else _load(model, config)
    timer = StepTimer(config.label, config.steps, None if quiet else sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kcore-bench-finetune-") as output_dir:
        trainer_class, callbacks = _trainer(config.side, wrapped)
        trainer = trainer_class(
            model=wrapped, args=training_arguments(config, output_dir, world), train_dataset=rows,
            data_collator=default_data_collator, callbacks=[timer, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log as a dict; the timer prints a line
        setup_rss = _peak_rss_bytes()
        trainer.train()
    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    return {
        "config": config.label,
        **asdict(config),
        "rank": trainer.args.process_index,
        "threads_used": torch.get_num_threads(),
        "optimizer": str(trainer.args.optim.value),
        "checkpointing_active": model.is_activation_checkpointing,  # what Trainer did with the arguments
        "step_seconds": timer.seconds,
        "seconds_per_step": statistics.median(timer.seconds[1:] or timer.seconds),
        "step_cpu_seconds": timer.cpu_seconds,
        "cpu_seconds_per_step": statistics.median(timer.cpu_seconds[1:] or timer.cpu_seconds),
        "losses": losses,
        "final_loss": losses[-1],
        "peak_rss_bytes": _peak_rss_bytes(),
        "setup_peak_rss_bytes": setup_rss,
        # the machine's load at the end (this run's own threads included): on a shared machine, how busy it was
        "load_average": list(os.getloadavg()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "batch_token_sum": sum(sum(row["input_ids"]) for row in rows),
        "versions": _versions(config.side),
    }


def training_arguments(config: WorkerConfig, output_dir: str, world: int) -> TrainingArguments:
    """The same arguments for both sides: a constant learning rate, a loss logged every step, no
    checkpoint, no report, no progress bar, no loader workers; checkpointing non-reentrant."""
    from kernel_core.platforms import current_platform

    platform_ = current_platform()
    options: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": config.batch_size // world,
        "max_steps": config.steps,
        "learning_rate": config.lr,
        "lr_scheduler_type": "constant",
        "seed": config.seed,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "use_cpu": platform_.device().type == "cpu",
        "activation_checkpointing": config.gradient_checkpointing,
    }
    if config.gradient_checkpointing:
        options["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if world > 1:
        options |= {"ddp_backend": platform_.distributed_backend(), "ddp_find_unused_parameters": False}
    return TrainingArguments(**options)


def token_rows(config: WorkerConfig, vocab_size: int) -> list[dict[str, list[int]]]:
    """``batch_size`` rows of ``seq_len`` token ids drawn from the seed, labels equal to the inputs.
    One step's worth: every step (and under DDP, every step's ranks together) trains on all of them,
    so the loss curves of both sides, and of 1 and N processes, are the same computation."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(0, vocab_size, (config.batch_size, config.seq_len), generator=generator).tolist()
    return [{"input_ids": row, "attention_mask": [1] * config.seq_len, "labels": row} for row in ids]


def _check(config: WorkerConfig) -> int:
    """The number of processes, checked against the configuration; refuses what cannot run."""
    if config.side not in SIDES:
        raise KernelCoreError(f"unknown side {config.side!r}: one of {', '.join(SIDES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != config.nproc:
        raise KernelCoreError(f"--nproc {config.nproc} but this worker runs as one of {world} process(es)")
    if config.batch_size % world:
        raise KernelCoreError(f"--batch-size {config.batch_size} does not split over {world} processes")
    return world


def _trainer(side: str, wrapped: Any) -> tuple[type, list[TrainerCallback]]:
    """Our ``AdapterTrainer`` with the callback ``kcore finetune`` adds, or the plain ``Trainer``,
    with, for a peft method that asks its user to call ``update_and_allocate(step)`` after every
    optimizer step (AdaLoRA's rank allocation), the callback that does."""
    if side == OURS:
        from kernel_core.finetune.callbacks import TunerTrainingCallback
        from kernel_core.finetune.trainer import AdapterTrainer

        return AdapterTrainer, [TunerTrainingCallback()]
    from transformers import Trainer

    update = getattr(wrapped.base_model, "update_and_allocate", None)
    return Trainer, [] if update is None else [PeftStepCallback(update)]


class PeftStepCallback(TrainerCallback):
    """peft's training-step protocol under the plain ``Trainer``: ``update_and_allocate(step)``
    after the optimizer step, gradients still in place, with the step number our
    :class:`~kernel_core.finetune.callbacks.TunerTrainingCallback` passes (counted from 1)."""

    def __init__(self, update: Any) -> None:
        self.update = update

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.update(state.global_step + 1)


def _wrap(model: Any, config: WorkerConfig) -> Any:
    """LoRA on all linear layers (the output head excluded, as both libraries define all-linear)."""
    options = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": "all-linear", "lora_dropout": 0.0}
    if config.side == OURS:
        from kernel_core.peft import get_config, get_peft_model

        return get_peft_model(model, get_config("lora", **options))
    peft = _import_peft()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft reads transformers' deprecated names
        return peft.get_peft_model(model, peft.LoraConfig(**options))


def _load(model: Any, config: WorkerConfig) -> Any:
    """The adapter in ``config.adapter``, trainable, by each library's own ``from_pretrained``;
    peft refuses ``is_trainable`` for a prompt-learning adapter, so one of those is wrapped anew
    from the saved config and given the saved weights (``set_peft_model_state_dict``), as a peft
    user resumes training it."""
    if config.side == OURS:
        from kernel_core.peft import PeftModel

        return PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
    peft = _import_peft()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        saved = peft.PeftConfig.from_pretrained(config.adapter)
        if not saved.is_prompt_learning:
            return peft.PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
        from safetensors.torch import load_file

        saved.inference_mode = False
        wrapped = peft.get_peft_model(model, saved)
        peft.set_peft_model_state_dict(wrapped, load_file(str(Path(config.adapter) / "adapter_model.safetensors")))
        return wrapped


def _import_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise KernelCoreError(
            f"the peft baseline needs the 'peft' package ({exc}): pip install peft, or pass --skip-peft"
        ) from None
    return peft


def _peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def _versions(side: str) -> dict[str, str]:
    import accelerate
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__}
    if side == PEFT:
        versions["peft"] = _import_peft().__version__
    return versions


def result_file(out: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its result: ``out`` itself for rank 0, ``<stem>.rank<k><suffix>`` beside it."""
    return out if rank == 0 else out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


def launch_ranks(nproc: int, argv: Sequence[str]) -> None:
    """Run this worker with ``argv`` on ``nproc`` local ranks through torch's elastic launcher, as
    ``kcore finetune --nproc`` does, and wait; a rank that fails fails the run, named."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from kernel_core.finetune.launch import describe_failure

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"kcore-bench-finetune-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.2,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "kernel_core.bench.finetune_worker", *argv)
    except ChildFailedError as exc:
        raise KernelCoreError(describe_failure(exc.failures, nproc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kernel_core.bench.finetune_worker",
        description="Run one configuration of kcore bench finetune and write its result as JSON.",
    )
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--side", required=True, choices=SIDES)
    parser.add_argument("--gradient-checkpointing", required=True, choices=("on", "off"))
    defaults = WorkerConfig(model="", side=OURS, gradient_checkpointing=False)
    for name, kind in (
        ("steps", int), ("batch_size", int), ("seq_len", int), ("r", int), ("lora_alpha", int), ("lr", float),
        ("seed", int), ("threads", int), ("nproc", int),
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    parser.add_argument("--adapter", help="a PEFT-format adapter folder both sides load trainable (instead of LoRA)")
    parser.add_argument("--method", help="the adapter's method, for the label")
    parser.add_argument("--out", required=True, help="the JSON file to write (rank k > 0: <stem>.rank<k>.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one configuration; with ``--nproc N`` > 1 outside a launcher, launch it on N ranks."""
    from kernel_core.finetune.launch import launched

    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    out = Path(args.pop("out"))
    args["gradient_checkpointing"] = args["gradient_checkpointing"] == "on"
    try:
        if args["nproc"] > 1 and not launched():
            launch_ranks(args["nproc"], argv)
            return 0
        result = train(WorkerConfig(**args))
    except KernelCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result_file(out, result["rank"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
