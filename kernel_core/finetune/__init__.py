"""Fine-tuning adapters: ``kcore finetune`` and the pieces it is built from.

- :mod:`~kernel_core.finetune.data`: JSONL rows checked, tokenized with loss on completions only, padded
- :mod:`~kernel_core.finetune.loop`: AdamW + warm-up/cosine, accumulation, clipping, eval, checkpoints
- :mod:`~kernel_core.finetune.checkpoint`: pickle-free checkpoints (safetensors + JSON) and resuming
- :mod:`~kernel_core.finetune.precision`: fp32, bf16 autocast, fp16 autocast with loss scaling
- :mod:`~kernel_core.finetune.exact_match`: greedy exact-match accuracy on held-out rows
- :mod:`~kernel_core.finetune.run`: one job end to end (what the CLI runs)

See docs/finetuning.md.
"""
