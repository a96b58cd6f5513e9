"""Train a kernel-core LoRA with a plain transformers Trainer, as in your own script.

The adapter comes from kernel_core.peft; datasets reads and tokenizes the rows, Trainer runs the
loop. TunerTrainingCallback runs the adapter method's training hook after every optimizer step
(a method whose adapter changes as it trains, like AdaLoRA, needs it), as kcore finetune does.

  python examples/trainer-script/train_with_trainer.py --output /tmp/records-lora
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase, Trainer, TrainingArguments

from kernel_core.finetune.callbacks import LossPlotCallback, TunerTrainingCallback
from lora_recipe import MAX_LENGTH, load_rows, lora_model, parse_args, save_adapter, training_options


def completion_only(tokenizer: PreTrainedTokenizerBase) -> Callable[[dict[str, str]], dict[str, Any]]:
    """Tokenize a row's prompt and completion (EOS after it); the prompt's labels are -100, so the
    loss counts only the tokens the model should write."""

    def encode(row: dict[str, str]) -> dict[str, Any]:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        input_ids = (prompt + completion)[:MAX_LENGTH]
        labels = ([-100] * len(prompt) + completion)[:MAX_LENGTH]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    return encode


def main(argv: list[str] | None = None) -> Trainer:
    """Train, save the adapter, and return the trainer (its ``state`` holds the losses)."""
    args = parse_args(__doc__, argv)
    model, tokenizer = lora_model(args.model)
    rows = load_rows(args.data)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**training_options(args)),
        train_dataset=rows.map(completion_only(tokenizer), remove_columns=rows.column_names),
        data_collator=DataCollatorForSeq2Seq(tokenizer),  # pads labels with -100 too
        callbacks=[TunerTrainingCallback(), LossPlotCallback()],
    )
    trainer.train()
    save_adapter(model, trainer, args)
    return trainer


if __name__ == "__main__":
    main()
