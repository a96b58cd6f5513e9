"""Train the same kernel-core LoRA with TRL's SFTTrainer.

SFTTrainer reads prompt/completion rows as they are and puts the loss on the completions only.
It takes transformers models (and peft's own PeftModel), so it is given the transformers model
inside ours, which holds the LoRA layers: training it trains the adapter. TunerTrainingCallback is
given our PeftModel, whose adapter method's hook it runs after every optimizer step.

  python examples/trainer-script/train_with_sft_trainer.py --output /tmp/records-lora-sft
"""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from kernel_core.finetune.callbacks import LossPlotCallback, TunerTrainingCallback
from lora_recipe import MAX_LENGTH, load_rows, lora_model, parse_args, save_adapter, training_options


def main(argv: list[str] | None = None) -> SFTTrainer:
    """Train, save the adapter, and return the trainer (its ``state`` holds the losses)."""
    args = parse_args(__doc__, argv)
    model, tokenizer = lora_model(args.model)
    trainer = SFTTrainer(
        model=model.get_base_model(),
        args=SFTConfig(**training_options(args), max_length=MAX_LENGTH),
        train_dataset=load_rows(args.data),
        processing_class=tokenizer,
        callbacks=[TunerTrainingCallback(model), LossPlotCallback()],
    )
    trainer.train()
    save_adapter(model, trainer, args)
    return trainer


if __name__ == "__main__":
    main()
