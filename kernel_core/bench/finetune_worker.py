"""One configuration of ``kcore bench finetune`` (one library, gradient checkpointing on or off), run in
a process of its own so that its peak RSS is its own: ``resource.getrusage`` reports the high-water
mark of the whole process, which no configuration run before it may have raised.

    python -m kernel_core.bench.finetune_worker --model FOLDER --side peft --gradient-checkpointing on \\
        --steps 20 --out result.json

Both sides train the same thing: the same base weights (one folder, fp32), the same batch (token ids
drawn from ``--seed``, labels equal to the inputs), LoRA with the same init (``torch.manual_seed(seed)``
right before wrapping; both libraries draw the LoRA A matrices in module order) and AdamW with a fixed
learning rate. Each step is forward, backward, optimizer step; its wall time and loss are recorded.
``peft`` is imported only for the ``peft`` side.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

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
    batch_size: int = 8
    seq_len: int = 256
    r: int = 16
    lora_alpha: int = 32
    lr: float = 1e-4
    seed: int = 0
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.side}, GC {'on' if self.gradient_checkpointing else 'off'}"

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


def train(config: WorkerConfig, quiet: bool = False) -> dict[str, Any]:
    """Build the model, adapter, batch and optimizer of ``config``, run its steps, and return the
    result: losses and seconds of every step, the median step time (the first step excluded: it pays
    one-off allocations) and the process's peak RSS at the end."""
    import torch

    if config.side not in SIDES:
        raise KernelCoreError(f"unknown side {config.side!r}: one of {', '.join(SIDES)}")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model = _base_model(config)
    batch = _batch(config, model.config.vocab_size)
    torch.manual_seed(config.seed)  # the LoRA init: the same draws on both sides
    wrapped = _wrap(model, config)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    setup_rss = _peak_rss_bytes()

    losses: list[float] = []
    seconds: list[float] = []
    for step in range(config.steps):
        start = time.perf_counter()
        loss = wrapped(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        if not quiet:
            print(
                f"[{config.label}] step {step + 1}/{config.steps}: loss {losses[-1]:.6f}, {seconds[-1]:.2f} s",
                file=sys.stderr, flush=True,
            )
    timed = seconds[1:] or seconds
    return {
        "config": config.label,
        **asdict(config),
        "threads_used": torch.get_num_threads(),
        "step_seconds": seconds,
        "seconds_per_step": statistics.median(timed),
        "losses": losses,
        "final_loss": losses[-1],
        "peak_rss_bytes": _peak_rss_bytes(),
        "setup_peak_rss_bytes": setup_rss,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "batch_token_sum": int(batch.sum()),
        "versions": _versions(config.side),
    }


def _base_model(config: WorkerConfig) -> Any:
    """The transformers model in fp32, in training mode, with checkpointing as configured (applied to
    the base model, before wrapping, the same way for both sides)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # stderr carries this benchmark's progress
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    model.train()
    if config.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _batch(config: WorkerConfig, vocab_size: int) -> Any:
    """``batch_size x seq_len`` token ids drawn from the seed: the same batch on both sides."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    return torch.randint(0, vocab_size, (config.batch_size, config.seq_len), generator=generator)


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
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if side == PEFT:
        versions["peft"] = _import_peft().__version__
    return versions


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
        ("seed", int), ("threads", int),
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    parser.add_argument("--out", required=True, help="the JSON file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    out = Path(args.pop("out"))
    args["gradient_checkpointing"] = args["gradient_checkpointing"] == "on"
    try:
        result = train(WorkerConfig(**args))
    except KernelCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
