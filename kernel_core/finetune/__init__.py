"""Fine-tuning adapters: ``kcore finetune`` and the pieces it is built from.

- :mod:`~kernel_core.finetune.arguments`: ``TrainingArguments`` from defaults, a file, flags and ``--set``
- :mod:`~kernel_core.finetune.data`: rows read through ``datasets``, checked, tokenized, packed, padded
- :mod:`~kernel_core.finetune.trainer`: ``AdapterTrainer``, transformers' ``Trainer`` for our adapters
- :mod:`~kernel_core.finetune.callbacks`: tuner training hooks, the progress bar, the loss plot
- :mod:`~kernel_core.finetune.plot`: ``loss.png``
- :mod:`~kernel_core.finetune.launch`: ``--nproc``: DDP ranks through torch's elastic launcher
- :mod:`~kernel_core.finetune.precision`: autocast for exact-match generation
- :mod:`~kernel_core.finetune.exact_match`: greedy exact-match accuracy on held-out rows
- :mod:`~kernel_core.finetune.run`: one job end to end (what the CLI runs on each rank)

See docs/finetune.md.
"""
