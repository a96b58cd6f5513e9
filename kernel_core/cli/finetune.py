"""``kcore finetune``: train a PEFT adapter (LoRA by default) on a JSONL file.

torch and transformers are imported inside ``run`` (through :mod:`kernel_core.finetune.run`) so
that ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kernel_core.cli.arguments import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from kernel_core.models import EMBEDDED_MODEL_ID

_DESCRIPTION = """\
Fine-tune an adapter on a model and save it in Hugging Face PEFT's format (it loads back with
kernel-core's PeftModel.from_pretrained and with HF peft's). Only the adapter trains;
the base model stays frozen.

Data (--data, --eval-data, --eval-exact-match): JSON lines, one row each, either
  {"prompt": "...", "completion": "..."}          raw text; EOS is added after the completion
  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
                                                   rendered with the tokenizer's chat template
The loss is on the completion / assistant tokens only. A malformed row stops the run before the
model loads, naming the file and line.

Optimisation: AdamW; the learning rate warms up linearly then decays on a cosine to 0; a step is
--grad-accum batches of --batch-size rows; gradients are clipped to --max-grad-norm.

Output: DIR/checkpoint-<step>/ every --save-steps steps (adapter + optimizer, scheduler, RNG and
step state, safetensors and JSON, never pickle); the final adapter and train_log.json in DIR.
--resume continues from the last checkpoint onto the same trajectory as an uninterrupted run."""

_EPILOG = """\
examples:
  kcore finetune --data train.jsonl --output adapters/capitals
  kcore finetune --model path/to/hf-model --data train.jsonl --eval-data dev.jsonl \\
      --eval-exact-match held_out.jsonl --r 8 --alpha 16 --target-modules q_proj,v_proj \\
      --epochs 3 --lr 1e-4 --batch-size 8 --grad-accum 4 --save-steps 50 --output out
  kcore finetune ... --output out --resume      # after an interruption: same command, plus --resume

see docs/finetuning.md for the details."""





def _target_modules(text: str) -> str | list[str]:
    """``all-linear`` (or a regex, passed on as one string when it has no comma) or a comma list."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("must name at least one module, or be all-linear")
    return names if "," in text else names[0]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` sub-parser; ``kernel_core.cli.main`` calls this once per process."""
    parser = subparsers.add_parser(
        "finetune",
        help="train a LoRA (or other PEFT) adapter on a JSONL file",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("model and data")
    io.add_argument(
        "--model",
        default=EMBEDDED_MODEL_ID,
        help="a known model id or a Hugging Face model folder with safetensors weights (default: %(default)s)",
    )
    io.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl", help="training rows (required)")
    io.add_argument(
        "--output", type=Path, required=True, metavar="DIR", help="where checkpoints and the final adapter go (required)"
    )
    io.add_argument("--eval-data", type=Path, metavar="FILE.jsonl", help="rows to measure the eval loss on")
    io.add_argument(
        "--eval-exact-match",
        type=Path,
        metavar="FILE.jsonl",
        help="held-out rows: greedy-generate each completion before and after training and print the "
        "share that matches exactly (whitespace stripped)",
    )
    io.add_argument(
        "--max-new-tokens",
        type=positive_int,
        metavar="N",
        help="longest generation for --eval-exact-match (default: the longest expected completion + 4)",
    )
    io.add_argument(
        "--max-len", type=positive_int, default=1024, metavar="TOKENS",
        help="cut rows to this many tokens, from the end (default: %(default)s)",
    )

    adapter = parser.add_argument_group("adapter")
    adapter.add_argument("--method", default="lora", help="PEFT method, a tuner plugin's name (default: %(default)s)")
    adapter.add_argument("--r", type=positive_int, default=16, metavar="RANK", help="LoRA rank (default: %(default)s)")
    adapter.add_argument(
        "--alpha", type=positive_float, default=32.0, metavar="ALPHA",
        help="LoRA alpha; updates are scaled by alpha / r (default: %(default)s)",
    )
    adapter.add_argument(
        "--dropout", type=fraction, default=0.05, metavar="P", help="LoRA dropout on the adapter's input (default: %(default)s)"
    )
    adapter.add_argument(
        "--target-modules",
        type=_target_modules,
        default="all-linear",
        metavar="NAMES",
        help="modules to adapt: all-linear (every linear layer but the output head), a comma list of "
        "name suffixes such as q_proj,v_proj, or a regex over full names (default: %(default)s)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=1, metavar="N", help="passes over the data (default: %(default)s)")
    optim.add_argument(
        "--max-steps", type=positive_int, metavar="N", help="stop after N optimizer steps (overrides --epochs)"
    )
    optim.add_argument("--lr", type=positive_float, default=2e-4, metavar="LR", help="peak learning rate (default: %(default)s)")
    optim.add_argument(
        "--weight-decay", type=non_negative_float, default=0.0, metavar="W", help="AdamW weight decay (default: %(default)s)"
    )
    optim.add_argument("--batch-size", type=positive_int, default=4, metavar="ROWS", help="rows per batch (default: %(default)s)")
    optim.add_argument(
        "--grad-accum", type=positive_int, default=1, metavar="N",
        help="batches accumulated per optimizer step; the effective batch is batch-size x N (default: %(default)s)",
    )
    warmup = optim.add_mutually_exclusive_group()
    warmup.add_argument(
        "--warmup-ratio", type=fraction, default=0.0, metavar="R",
        help="share of the steps spent warming the learning rate up from 0 (default: %(default)s)",
    )
    warmup.add_argument("--warmup-steps", type=non_negative_int, metavar="N", help="warm-up steps (instead of a ratio)")
    optim.add_argument(
        "--max-grad-norm", type=non_negative_float, default=1.0, metavar="NORM",
        help="clip the gradients' global L2 norm to NORM; 0 turns clipping off (default: %(default)s)",
    )
    optim.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the adapter's init, data order and dropout (default: %(default)s)")

    runtime = parser.add_argument_group("memory, precision and checkpoints")
    runtime.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="fp32; bf16: autocast to bfloat16 (CPU and GPU); fp16: autocast to float16 with loss "
        "scaling. Weights stay fp32 (default: %(default)s)",
    )
    runtime.add_argument(
        "--gradient-checkpointing", action="store_true",
        help="recompute activations during backward instead of storing them: less memory, ~30%% slower",
    )
    runtime.add_argument(
        "--save-steps", type=positive_int, metavar="N",
        help="write DIR/checkpoint-<step> (and measure the eval loss) every N steps (default: only the final adapter)",
    )
    runtime.add_argument(
        "--resume", action="store_true",
        help="continue from the last checkpoint in DIR (starts from scratch when there is none)",
    )
    runtime.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the job; errors propagate to ``kcore``'s one-line error handler."""
    from kernel_core.finetune.loop import TrainConfig
    from kernel_core.finetune.run import FinetuneJob, run_finetune

    config = TrainConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm or None,
        save_steps=args.save_steps,
        seed=args.seed,
        precision=args.precision,
    )
    job = FinetuneJob(
        model=args.model,
        data=args.data,
        output=args.output,
        method=args.method,
        r=args.r,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=args.target_modules,
        max_len=args.max_len,
        gradient_checkpointing=args.gradient_checkpointing,
        eval_data=args.eval_data,
        eval_exact_match=args.eval_exact_match,
        max_new_tokens=args.max_new_tokens,
        resume=args.resume,
        progress=not args.no_progress,
        train=config,
    )
    try:
        run_finetune(job)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_left_after_interrupt(args.output)) from None
    return 0


def _left_after_interrupt(output: Path) -> str:
    """What an interrupted run leaves to resume from: checkpoints are complete or ignored."""
    from kernel_core.finetune.checkpoint import latest_checkpoint

    last = latest_checkpoint(output)
    if last is None:
        return "no checkpoint was saved (--save-steps N saves one every N steps)"
    return f"{last} is kept: the same command with --resume continues from it"

