"""What both scripts share: the command line, the base model with a fresh kernel-core LoRA, the
rows, the training options, and saving the adapter. Only the trainer differs between them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Trainer, set_seed

from kernel_core.models.resolve import resolve_model
from kernel_core.peft import PeftModel, get_config, get_peft_model

PERSON_RECORDS = Path(__file__).resolve().parent.parent / "person-records" / "train.jsonl"
#: The longest person-records row is 59 tokens (prompt, completion and EOS).
MAX_LENGTH = 128


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model id kernel-core knows, or a Hugging Face model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=PERSON_RECORDS, help="JSONL rows {\"prompt\": ..., \"completion\": ...} (default: the person-records training split)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the adapter and loss.png")
    parser.add_argument("--max-steps", type=int, default=40, help="optimizer steps of 8 rows (default: %(default)s, one pass over person-records)")
    return parser.parse_args(argv)


def lora_model(model: str) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The model with a LoRA on every linear layer but the output head; only the LoRA trains."""
    folder = resolve_model(model)
    set_seed(0)  # LoRA's A matrices start random
    config = get_config("lora", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(AutoModelForCausalLM.from_pretrained(folder), config), AutoTokenizer.from_pretrained(folder)


def load_rows(path: Path) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(path), split="train")


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``TrainingArguments`` (and of TRL's ``SFTConfig``, which extends it)."""
    return {
        "output_dir": str(args.output),
        "max_steps": args.max_steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,  # a tenth of the steps
        "logging_steps": 1,
        # a plain Trainer's checkpoint holds the whole model, not the adapter: save only at the end
        "save_strategy": "no",
        "report_to": "none",
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "seed": 0,
    }


def save_adapter(model: PeftModel, trainer: Trainer, args: argparse.Namespace) -> None:
    """Write the adapter alone (PEFT's format) into ``--output`` and say how to serve it."""
    model.save_pretrained(args.output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(
        f"trained {trainer.state.global_step} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; the adapter is in "
        f"{args.output} (loss.png beside it); serve it with: kcore serve --model {args.model} --adapter records={args.output}"
    )
