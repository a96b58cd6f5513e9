"""``kcore generate``: one completion for one prompt, printed alone on stdout so it can be piped.

Until kernel-core's own engine lands, generation runs through HF transformers ``generate``. torch and
transformers are imported inside ``run`` so that ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kernel_core.errors import KernelCoreError
from kernel_core.models import EMBEDDED_MODEL_ID, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` sub-parser; ``kernel_core.cli.main`` calls this once per process."""
    parser = subparsers.add_parser(
        "generate",
        help="generate text for one prompt",
        description=(
            "Generate a completion for one prompt and print only the generated text to stdout. "
            "By default the prompt is sent as a user message through the model's chat template "
            "and decoding is greedy, so the answer is reproducible."
        ),
        epilog='example: kcore generate "What is the capital of France?"',
    )
    parser.add_argument("prompt", help="the prompt text, or - to read it from stdin (trailing newlines dropped)")
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL_ID,
        help="a known model id or a Hugging Face model folder with safetensors weights (default: %(default)s)",
    )
    parser.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wrap the prompt in the model's chat template as a user message (default: on); "
        "--no-chat continues the raw text",
    )
    parser.add_argument(
        "--max-tokens", type=_positive_int, default=64, help="most new tokens to generate (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sampling temperature; 0 means greedy (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the generated text; errors propagate to ``kcore``'s one-line error handler."""
    prompt = sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt
    if not prompt:
        raise KernelCoreError("the prompt is empty")
    print(_generate(resolve_model(args.model), prompt, args))
    return 0


def _generate(folder: Path, prompt: str, args: argparse.Namespace) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    if args.chat:
        if not tokenizer.chat_template:
            raise KernelCoreError(f"model {folder} has no chat template: pass --no-chat to continue raw text")
        messages = [{"role": "user", "content": prompt}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sampling = (
        {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0}
        if args.temperature > 0
        else {"do_sample": False}
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_tokens, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
