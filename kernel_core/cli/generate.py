"""``kcore generate``: one completion for one prompt, streamed alone to stdout so it can be piped.

Also what ``kcore chat`` shares with it: the engine and sampling options, building the engine,
and streaming one request's text. The engine brings torch, so it is imported inside the functions
that need it: ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from kernel_core.cli.arguments import (
    add_plugin_options,
    non_empty,
    non_negative_float,
    non_negative_int,
    number,
    plugin_options,
    positive_float,
    positive_int,
)
from kernel_core.errors import KernelCoreError
from kernel_core.models import EMBEDDED_MODEL_ID

if TYPE_CHECKING:
    from kernel_core.engine.llm_engine import LLMEngine
    from kernel_core.sampling_params import SamplingParams

#: The CLI runs one request at a time, so one id serves them all.
REQUEST_ID = "kcore-cli"
#: The name ``--adapter``'s folder is loaded under.
ADAPTER_NAME = "cli-adapter"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` sub-parser; ``kernel_core.cli.main`` calls this once per process."""
    parser = subparsers.add_parser(
        "generate",
        help="generate text for one prompt",
        description=(
            "Generate a completion for one prompt with kernel-core's engine and stream only the "
            "generated text to stdout. By default the prompt is sent as a user message through the "
            "model's chat template and decoding is greedy, so the answer is reproducible."
        ),
        epilog='example: kcore generate "What is the capital of France?"',
    )
    parser.add_argument("prompt", help="the prompt text, or - to read it from stdin (trailing newlines dropped)")
    add_engine_options(parser)
    parser.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wrap the prompt in the model's chat template as a user message (default: on); "
        "--no-chat continues the raw text",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="PATH",
        help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) of a served kind (LoRA, "
        "IA3, prompt learning) to generate with, applied unmerged by the serving path",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=positive_int,
        default=None,
        metavar="R",
        help="highest adapter rank the engine accepts (default: the adapter's own rank)",
    )
    add_sampling_options(parser, max_tokens=64)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stream the generated text; errors propagate to ``kcore``'s one-line error handler."""
    prompt = sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt
    if not prompt:
        raise KernelCoreError("the prompt is empty")
    engine = build_engine(args)
    if args.adapter is not None:
        engine.load_adapter(ADAPTER_NAME, args.adapter)
    if args.chat:
        prompt = chat_prompt(engine, [{"role": "user", "content": prompt}])
    adapter = ADAPTER_NAME if args.adapter is not None else None
    stream_text(engine, prompt, sampling_params(args), sys.stdout, adapter=adapter)
    print()
    return 0


# -- shared with ``kcore chat`` ----------------------------------------------------------------


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The model and the engine settings a terminal user may need."""
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL_ID,
        help="a known model id or a Hugging Face model folder with safetensors weights (default: %(default)s)",
    )
    parser.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        metavar="TOKENS",
        help="longest prompt plus output, in tokens (default: the model's context)",
    )
    parser.add_argument(
        "--kv-cache-memory",
        type=positive_float,
        default=None,
        metavar="GIB",
        help="KV-cache budget in GiB (default: a share of free memory)",
    )
    parser.add_argument(
        "--moe-kernel",
        default=None,
        metavar="NAME",
        help="MoE kernel plugin for mixture-of-experts models (default: by priority for the device)",
    )
    parser.add_argument(
        "--moe-quantization",
        choices=["int8"],
        default=None,
        help="store MoE expert weights as int8, quantized at load (default: the model's dtype)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the model across N ranks, one process each (docs/distributed.md; default: %(default)s)",
    )
    parser.add_argument(
        "--distributed-executor",
        default=None,
        metavar="NAME",
        help="executor plugin running the ranks: uniproc, mp, ... (default: by priority for the size)",
    )
    add_plugin_options(parser)


def add_sampling_options(parser: argparse.ArgumentParser, *, max_tokens: int) -> None:
    """The sampling knobs that matter from a terminal; the defaults decode greedily."""
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=max_tokens,
        metavar="N",
        help="most new tokens to generate (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 means greedy (default: %(default)s)",
    )
    parser.add_argument(
        "--top-p",
        type=number(float, lambda v: 0 < v <= 1, "in (0, 1]"),
        default=1.0,
        metavar="P",
        help="nucleus sampling: keep the fewest tokens whose probabilities sum to P (default: 1, off)",
    )
    parser.add_argument(
        "--top-k",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="keep the K most likely tokens (default: 0, off)",
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="random seed, for reproducible sampling")
    parser.add_argument(
        "--stop",
        type=non_empty,
        action="append",
        default=[],
        metavar="TEXT",
        help="end the output where TEXT is generated (left out of the output); repeatable",
    )


def build_engine(args: argparse.Namespace) -> LLMEngine:
    """The step-level engine for the options of :func:`add_engine_options`."""
    from kernel_core.config import EngineConfig
    from kernel_core.engine.llm_engine import LLMEngine

    lora: dict[str, Any] = {}
    adapter = getattr(args, "adapter", None)
    if adapter is not None:
        rank = getattr(args, "max_lora_rank", None) or adapter_rank(adapter)
        lora = dict(enable_lora=True, max_loras=1, max_lora_rank=rank)
        if adapter_virtual_tokens(adapter):  # the slots sized for this adapter alone
            lora["max_virtual_tokens"] = adapter_virtual_tokens(adapter)
    config = EngineConfig(
        model=args.model, max_model_len=args.max_model_len, kv_cache_memory=args.kv_cache_memory,
        moe_kernel=args.moe_kernel, moe_quantization=args.moe_quantization, plugin_options=plugin_options(args),
        tensor_parallel_size=args.tensor_parallel_size, distributed_executor=args.distributed_executor, **lora,
    )
    return LLMEngine(config)


def adapter_rank(folder: str) -> int:
    """The highest rank an adapter's config declares (``r`` and ``rank_pattern``); 16 when the
    config cannot say, and loading then names the problem."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        ranks = [config.get("r", 16), *(config.get("rank_pattern") or {}).values()]
        return max(int(rank) for rank in ranks if int(rank) >= 1)
    except (OSError, ValueError, TypeError, AttributeError):
        return 16


def adapter_virtual_tokens(folder: str) -> int:
    """The virtual tokens an adapter's config declares (``num_virtual_tokens``, prompt
    learning); 0 when none or the config cannot say (loading then names the problem)."""
    import json
    from pathlib import Path

    try:
        return max(0, int(json.loads((Path(folder) / "adapter_config.json").read_text()).get("num_virtual_tokens") or 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The request's parameters from the options of :func:`add_sampling_options`."""
    from kernel_core.sampling_params import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
    )


def chat_prompt(engine: LLMEngine, messages: Sequence[dict[str, str]]) -> str:
    """The conversation as the model expects it, ending where the assistant's reply starts."""
    tokenizer = engine.tokenizer
    if not tokenizer.chat_template:
        raise KernelCoreError(
            f"model {engine.components.folder} has no chat template (kcore generate --no-chat continues raw text)"
        )
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def stream_text(
    engine: LLMEngine, prompt: str, params: SamplingParams, out: TextIO, *, adapter: str | None = None
) -> str:
    """Run one request to its end, writing its text to ``out`` as it grows (flushed each step) so
    the user reads it while it is generated; returns the whole text.

    Bad input raises :class:`~kernel_core.errors.InvalidRequestError`; a request that fails while
    generating raises :class:`KernelCoreError`. Interrupted (Ctrl-C), the request is aborted so its
    KV blocks are free for the next one. ``adapter`` names a loaded adapter to run with.
    """
    engine.add_request(REQUEST_ID, prompt, params, adapter=adapter)
    text = ""
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                completion = output.outputs[0]
                out.write(completion.text[len(text) :])
                out.flush()
                text = completion.text
                if completion.finish_reason == "error":
                    raise KernelCoreError(f"generation failed: {completion.error}")
    finally:
        if engine.abort_request(REQUEST_ID):
            while engine.has_unfinished_requests():
                engine.step()
    return text
