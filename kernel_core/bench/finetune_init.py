"""The starting adapter of one ``kcore bench finetune --method M`` comparison, made once by
Hugging Face ``peft`` in a process of its own and saved in PEFT's format, so that ours and peft's
runs both load the same weights (``from_pretrained(..., is_trainable=True)``) and their loss curves
can be compared step by step, whatever the method draws at init and in which order.

    python -m kernel_core.bench.finetune_init --model FOLDER --config adapter_config.json --seed 0 --out DIR

``--config`` is the method's config as kernel-core writes ``adapter_config.json`` (its fields and
``peft_type``); peft builds its own config class from it, the model is wrapped after
``torch.manual_seed(seed)`` and the adapter is saved to ``--out``. peft resolves
``target_modules=None`` to its per-architecture default there, and the saved config names them.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path


def make_adapter(model_folder: str, config: dict[str, object], seed: int, out: Path) -> None:
    """Wrap the fp32 model with peft's ``config`` after seeding, and save the adapter to ``out``."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, use_safetensors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft reads transformers' deprecated names
        peft_config = peft.PeftConfig.from_peft_type(**config)
        torch.manual_seed(seed)
        peft.get_peft_model(model, peft_config).save_pretrained(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernel_core.bench.finetune_init",
        description="Make and save, with peft, the starting adapter of a kcore bench finetune --method comparison.",
    )
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--config", required=True, type=Path, help="adapter_config.json contents (with peft_type)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="the folder to save the adapter to")
    args = parser.parse_args(argv)
    make_adapter(args.model, json.loads(args.config.read_text()), args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
