"""``kcore finetune``: train a PEFT adapter of any installed method (LoRA by default) with
transformers' ``Trainer``.

torch and transformers are imported inside ``run`` (through :mod:`kernel_core.finetune.run`) so
that ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernel_core.cli.arguments import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from kernel_core.errors import KernelCoreError
from kernel_core.models import EMBEDDED_MODEL_ID

_DESCRIPTION = """\
Fine-tune an adapter on a model and save it in Hugging Face PEFT's format (it loads back with
kernel-core's PeftModel.from_pretrained and with HF peft's). Only the adapter trains; the base
model stays frozen. Training runs on transformers' Trainer (Accelerate underneath).

Data (--data, --eval-data, --eval-exact-match): JSON lines, JSON, CSV, Parquet or a folder saved
with datasets' save_to_disk, read through Hugging Face datasets; each row one of
  {"prompt": "...", "completion": "..."}           raw text; EOS is added after the completion
  {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}   the chat template
  {"prompt": [messages], "completion": [messages]}  TRL's conversational prompt-completion
  {"text": "..."}                                   language modelling: every token is learned
The loss is on the completion / assistant tokens only. A malformed row stops the run before the
model loads, naming the file and line.

Adapter options: --method picks any installed PEFT method (a tuner plugin); every field of its
config is reachable. Layers, each over the one before: the method's defaults (kernel-core's for
LoRA: target_modules all-linear), --adapter-config FILE.json (PEFT's adapter_config.json style),
the shortcuts --r, --alpha, --dropout, --target-modules (each refused for a method without that
field), then --set key=value. kcore finetune --method M --show-config lists M's fields with their
types, defaults and meaning; a wrong field or value is refused by name before the model loads.

Training arguments: every field of transformers' TrainingArguments is reachable. Layers, each
over the one before: kernel-core's defaults (cosine schedule, lr 2e-4, batch 4, a loss logged
every step, no checkpoints, no reports), --training-args FILE.json, the flags below, then
--set key=value. --set takes a method field and a TrainingArguments field alike; where both have a
key, --set adapter.KEY=... or --set training.KEY=... says which. Unknown fields and wrong types are
refused by name (--list-training-args lists every field with its type, default and meaning).

Output: DIR/checkpoint-<step>/ every --save-steps steps (complete or absent, never half-written);
the final adapter, trainer_state.json, training_args.json and loss.png in DIR. --resume continues
from the last checkpoint onto the same trajectory as an uninterrupted run.

Several processes: --nproc N trains with DDP on N local processes (one per GPU, or CPU cores with
gloo); torchrun / accelerate launch -m kernel_core finetune ... run the same entry on many nodes."""

_EPILOG = """\
examples:
  kcore finetune --data train.jsonl --output adapters/capitals
  kcore finetune --model path/to/hf-model --data train.parquet --eval-data dev.jsonl \\
      --eval-exact-match held_out.jsonl --r 8 --alpha 16 --target-modules q_proj,v_proj \\
      --epochs 3 --lr 1e-4 --batch-size 8 --grad-accum 4 --save-steps 50 --output out
  kcore finetune ... --set report_to=tensorboard --set lr_scheduler_type=linear
  kcore finetune ... --method lora --adapter-config adapter_config.json --set use_rslora=true
  kcore finetune --method lora --show-config      # the method's fields, types, defaults and meaning
  kcore finetune ... --training-args fsdp.json --nproc 2
  kcore finetune ... --output out --resume      # after an interruption: same command, plus --resume
  kcore finetune --list-training-args

see docs/finetune.md for the details."""


class _HelpWithFields(argparse.Action):
    """``--help`` that also names the installed PEFT methods and every ``TrainingArguments`` field
    ``--set`` and ``--training-args`` take; read at that moment (a second's import), so the lists
    never go stale."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        import textwrap

        from kernel_core.contracts.records import PluginKind
        from kernel_core.finetune.arguments import fields
        from kernel_core.plugins import get_plugin_manager

        names = textwrap.fill(", ".join(sorted(fields())), width=100, initial_indent="  ", subsequent_indent="  ")
        methods = ", ".join(sorted(r.name for r in get_plugin_manager().registrations(PluginKind.TUNER))) or "none"
        parser.epilog = (
            f"{parser.epilog}\n\nInstalled PEFT methods (--method; --method M --show-config lists M's fields): {methods}"
            f"\n\nTrainingArguments fields (--set KEY=VALUE, --training-args FILE.json; --list-training-args explains each):\n{names}"
        )
        parser.print_help()
        parser.exit()


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
        help="train a PEFT adapter (LoRA or any installed method) with transformers' Trainer",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=_HelpWithFields, help="show this help, with every TrainingArguments field, and exit")
    io = parser.add_argument_group("model and data")
    io.add_argument(
        "--model",
        default=EMBEDDED_MODEL_ID,
        help="a known model id or a Hugging Face model folder with safetensors weights (default: %(default)s)",
    )
    io.add_argument("--data", type=Path, metavar="FILE", help="training rows: .jsonl, .json, .csv, .parquet or a saved dataset folder (required)")
    io.add_argument(
        "--output", type=Path, metavar="DIR", help="where checkpoints and the final adapter go (required)"
    )
    io.add_argument("--eval-data", type=Path, metavar="FILE", help="rows to measure the eval loss on")
    io.add_argument(
        "--eval-exact-match",
        type=Path,
        metavar="FILE",
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
    io.add_argument(
        "--streaming", action="store_true",
        help="read the training data as it trains, for files larger than memory (needs --max-steps)",
    )
    io.add_argument(
        "--packing", action="store_true",
        help="pack several rows into each --max-len row (each still attends only to itself): fewer pad tokens",
    )

    adapter = parser.add_argument_group("adapter (the method's config fields; --method M --show-config lists them)")
    adapter.add_argument("--method", default="lora", help="PEFT method, an installed tuner plugin's name (default: %(default)s)")
    adapter.add_argument(
        "--show-config", action="store_true",
        help="print the --method's config fields (type, default, meaning), which --adapter-config and --set take, and exit",
    )
    adapter.add_argument(
        "--adapter-config", type=Path, metavar="FILE.json",
        help="a JSON object of the method's config fields, as in PEFT's adapter_config.json (its peft_type, if any, "
        "must be the method's)",
    )
    adapter.add_argument("--r", type=positive_int, metavar="RANK", help="the rank field r (LoRA and methods with one; default: the method's)")
    adapter.add_argument(
        "--alpha", type=positive_float, metavar="ALPHA",
        help="the field lora_alpha: LoRA updates are scaled by alpha / r (default: the method's)",
    )
    adapter.add_argument(
        "--dropout", type=fraction, metavar="P", help="the field lora_dropout, on the adapter's input (default: the method's)"
    )
    adapter.add_argument(
        "--target-modules",
        type=_target_modules,
        metavar="NAMES",
        help="modules to adapt: all-linear (every linear layer but the output head), a comma list of "
        "name suffixes such as q_proj,v_proj, or a regex over full names (default: all-linear for LoRA, "
        "else the method's)",
    )

    optim = parser.add_argument_group(
        "training (shortcuts for TrainingArguments fields; defaults are kernel-core's)"
    )
    for flags, kind, metavar, text in _TRAINING_FLAGS:
        optim.add_argument(*flags, type=kind, metavar=metavar, help=text)
    optim.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"),
        help="fp32 (default); bf16: mixed precision in bfloat16 (CPU and GPU); fp16: float16 with loss "
        "scaling (GPU). Weights stay fp32",
    )
    optim.add_argument(
        "--gradient-checkpointing", action="store_true",
        help="recompute activations during backward instead of storing them: less memory, ~30%% slower",
    )
    optim.add_argument("--no-progress", action="store_true", help="no progress bar")

    every = parser.add_argument_group("every TrainingArguments field")
    every.add_argument(
        "--training-args", type=Path, metavar="FILE.json",
        help="a JSON object of TrainingArguments fields (e.g. an FSDP set-up; see docs/finetune.md)",
    )
    every.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="one field of the method's config or of TrainingArguments (repeatable; JSON values such as 1e-4, "
        "true, [..] are typed; adapter.KEY= or training.KEY= where both have KEY), applied last: "
        "--set report_to=tensorboard --set use_rslora=true",
    )
    every.add_argument(
        "--list-training-args", action="store_true", help="print every TrainingArguments field with its type, default and help, and exit"
    )

    runtime = parser.add_argument_group("checkpoints and processes")
    runtime.add_argument(
        "--save-steps", type=positive_int, metavar="N",
        help="write DIR/checkpoint-<step> (and measure the eval loss) every N steps (default: only the final adapter)",
    )
    runtime.add_argument(
        "--resume", action="store_true",
        help="continue from the last checkpoint in DIR (starts from scratch when there is none)",
    )
    runtime.add_argument(
        "--nproc", type=positive_int, default=1, metavar="N",
        help="train on N local processes with DDP (gloo on the CPU, NCCL on GPUs); the batch flags are "
        "per process, so the global batch is N x --batch-size x --grad-accum (default: %(default)s)",
    )
    parser.set_defaults(func=run)


#: ``(flags, type, metavar, help)`` of the shortcuts; :func:`shortcut_values` maps them to fields.
_TRAINING_FLAGS = (
    (("--epochs",), positive_float, "N", "passes over the data: num_train_epochs (default: 1)"),
    (("--max-steps",), positive_int, "N", "stop after N optimizer steps, overriding --epochs: max_steps"),
    (("--lr",), positive_float, "LR", "peak learning rate: learning_rate (default: 2e-4)"),
    (("--weight-decay",), non_negative_float, "W", "AdamW weight decay: weight_decay (default: 0)"),
    (("--batch-size",), positive_int, "ROWS", "rows per batch and process: per_device_train/eval_batch_size (default: 4)"),
    (("--grad-accum",), positive_int, "N", "batches accumulated per optimizer step: gradient_accumulation_steps (default: 1)"),
    (("--warmup-ratio",), fraction, "R", "share of the steps warming the learning rate up from 0: warmup_steps as a ratio"),
    (("--warmup-steps",), non_negative_int, "N", "warm-up steps: warmup_steps (default: 0)"),
    (("--max-grad-norm",), non_negative_float, "NORM", "clip the gradients' global L2 norm; 0 turns clipping off (default: 1)"),
    (("--seed",), int, "N", "seed of the adapter's init, data order and dropout: seed (default: 0)"),
)


def shortcut_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingArguments fields the shortcut flags given on the command line set."""
    values: dict[str, Any] = {}
    pairs = {
        "epochs": "num_train_epochs", "max_steps": "max_steps", "lr": "learning_rate",
        "weight_decay": "weight_decay", "grad_accum": "gradient_accumulation_steps",
        "warmup_ratio": "warmup_steps", "warmup_steps": "warmup_steps", "max_grad_norm": "max_grad_norm", "seed": "seed",
    }
    for option, name in pairs.items():
        if getattr(args, option) is not None:
            values[name] = getattr(args, option)
    if args.batch_size is not None:
        values |= {"per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.batch_size}
    if args.precision is not None:
        values |= {"bf16": args.precision == "bf16", "fp16": args.precision == "fp16"}
    if args.gradient_checkpointing:
        values |= {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
    if args.save_steps is not None:
        values |= {"save_strategy": "steps", "save_steps": args.save_steps}
    if args.no_progress:
        values["disable_tqdm"] = True
    return values


def run(args: argparse.Namespace) -> int:
    """Run the job (on ``--nproc`` processes); errors propagate to ``kcore``'s one-line error handler."""
    from kernel_core.finetune import adapter_options, arguments
    from kernel_core.peft.config import get_method

    if args.list_training_args:
        print(arguments.describe())
        return 0
    method = get_method(args.method)  # an unknown one is named, with the installed ones
    if args.show_config:
        print(adapter_options.describe(method))
        return 0
    missing = [option for option in ("data", "output") if getattr(args, option) is None]
    if missing:
        raise KernelCoreError(f"kcore finetune needs {' and '.join('--' + m for m in missing)} (see kcore finetune --help)")
    if args.warmup_ratio is not None and args.warmup_steps is not None:
        raise KernelCoreError("--warmup-ratio and --warmup-steps both set warmup_steps: give one")
    adapter_set, training_set = adapter_options.route_set(arguments.parse_set(args.set), method)
    layers = []
    if args.training_args is not None:
        layers.append((f"--training-args {args.training_args}", arguments.read_file(args.training_args)))
    layers.append(("the command-line flags", shortcut_values(args)))
    layers.append(("--set", training_set))
    for source, values in layers:
        arguments.check(values, source)  # a typo fails here, before any process or model starts
    adapter_layers = []
    if args.adapter_config is not None:
        adapter_layers.append((f"--adapter-config {args.adapter_config}", adapter_options.read_file(args.adapter_config, method)))
    shortcuts = {"--r": args.r, "--alpha": args.alpha, "--dropout": args.dropout, "--target-modules": args.target_modules}
    adapter_layers.append(("the command-line flags", adapter_options.shortcut_values(shortcuts, method)))
    adapter_layers.append(("--set", adapter_set))
    adapter_options.build(args.method, adapter_layers)  # likewise for the adapter's options

    from kernel_core.finetune.launch import check_nproc, launch, launched

    if args.nproc > 1 and not launched():
        check_nproc(args.nproc)  # before any rank starts, so the error has no note about checkpoints
        try:
            launch(args.nproc, _argv_without_nproc(args.argv[args.argv.index("finetune") + 1 :]))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(_left_after_interrupt(args.output)) from None
        except KernelCoreError as exc:
            raise KernelCoreError(f"{exc}; {_left_after_interrupt(args.output)}") from None
        return 0

    from kernel_core.finetune.run import FinetuneJob, run_finetune

    job = FinetuneJob(
        model=args.model,
        data=args.data,
        output=args.output,
        method=args.method,
        adapter_options=adapter_layers,
        max_len=args.max_len,
        eval_data=args.eval_data,
        eval_exact_match=args.eval_exact_match,
        max_new_tokens=args.max_new_tokens,
        resume=args.resume,
        streaming=args.streaming,
        packing=args.packing,
        progress=not args.no_progress,
        training_args=layers,
    )
    try:
        run_finetune(job)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_left_after_interrupt(args.output)) from None
    return 0


def _argv_without_nproc(argv: Sequence[str]) -> list[str]:
    """The command's own arguments for each rank: everything but ``--nproc N``."""
    result, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            result.append(item)
    return result


def _left_after_interrupt(output: Path) -> str:
    """What an interrupted run leaves to resume from: checkpoints are complete or absent."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if last is None:
        return "no checkpoint was saved (--save-steps N saves one every N steps)"
    return f"{last} is kept: the same command with --resume continues from it"
