"""``kcore serve``: the OpenAI-compatible HTTP server (docs/http-server.md) over one engine.

The engine and FastAPI are imported inside :func:`run`, so ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kernel_core.cli.arguments import non_negative_float, number, plugin_options, positive_float, positive_int
from kernel_core.cli.generate import adapter_rank, adapter_virtual_tokens, add_engine_options
from kernel_core.errors import KernelCoreError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description=(
            "Serve a model, and LoRA adapters on it, over HTTP with OpenAI's API (/v1/completions, "
            "/v1/chat/completions, /v1/models), plus /v1/adapters, /health, /metrics, /tokenize and "
            "/detokenize. Concurrent requests are batched continuously by one engine. SIGTERM stops "
            "it gracefully (exit status 0); so does Ctrl-C (exit status 130), a second Ctrl-C "
            "without waiting for in-flight requests."
        ),
        epilog="example: kcore serve --model smollm2-135m-instruct --adapter capitals=adapters/capitals",
    )
    add_engine_options(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=number(int, lambda v: 0 <= v < 65536, "a port (0-65535)"),
                        default=DEFAULT_PORT, help="port to listen on; 0 picks a free one (default: %(default)s)")
    parser.add_argument(
        "--served-model-name", default=None, metavar="NAME",
        help="the `model` clients send for the base model (default: --model as given)",
    )
    parser.add_argument(
        "--api-key", default=None, metavar="KEY",
        help="require `Authorization: Bearer KEY` on every route but /health and /metrics "
        "(default: $KERNEL_CORE_API_KEY, else none)",
    )
    parser.add_argument(
        "--adapter", action="append", default=[], type=_adapter_arg, metavar="NAME=PATH",
        help="load a PEFT LoRA folder at start, served as model NAME; repeatable",
    )
    parser.add_argument(
        "--adapter-dir", type=Path, default=None, metavar="DIR",
        help="let POST /v1/adapters load adapters from folders inside DIR (and nowhere else)",
    )
    parser.add_argument("--max-loras", type=positive_int, default=None, metavar="N",
                        help="adapters that can run in one step (default: 8)")
    parser.add_argument("--max-lora-rank", type=positive_int, default=None, metavar="R",
                        help="highest adapter rank accepted (default: the highest --adapter rank, at least 16)")
    parser.add_argument("--max-cpu-loras", type=positive_int, default=None, metavar="N",
                        help="converted adapters kept in host memory (default: --max-loras)")
    parser.add_argument("--max-num-seqs", type=positive_int, default=None, metavar="N",
                        help="most requests running at once (default: 128)")
    parser.add_argument("--max-num-batched-tokens", type=positive_int, default=None, metavar="TOKENS",
                        help="token budget of one engine step (default: 2048)")
    parser.add_argument("--num-kv-blocks", type=positive_int, default=None, metavar="N",
                        help="exact number of KV-cache blocks (overrides --kv-cache-memory)")
    parser.add_argument("--request-timeout", type=positive_float, default=None,
                        metavar="SECONDS", help="abort a request this long after it arrived (default: never)")
    parser.add_argument("--shutdown-timeout", type=non_negative_float, default=30.0,
                        metavar="SECONDS",
                        help="on SIGTERM or Ctrl-C, how long in-flight requests may finish before they are aborted "
                        "(default: %(default)s)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=8 * 2**20, metavar="BYTES",
                        help="largest request body accepted; larger ones get 413 (default: %(default)s, 8 MiB)")
    parser.add_argument("--request-read-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                        help="a request body must arrive in full within this time, else 408 (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: %(default)s)")
    parser.add_argument(
        "--print-examples", action="store_true",
        help="once listening, print a ready-to-paste curl command and openai script for this server (stdout)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kernel_core.server.auth import ENV_API_KEY

    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY) or None
    model_name = args.served_model_name or args.model
    names = [name for name, _ in args.adapter]
    if len(set(names)) != len(names) or model_name in names:
        raise KernelCoreError(f"--adapter names must be distinct and differ from the model's ({model_name!r})")
    adapter_dir = args.adapter_dir
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise KernelCoreError(f"--adapter-dir {adapter_dir} is not a folder")

    from kernel_core.engine.async_engine import AsyncLLMEngine
    from kernel_core.server import ServerSettings, create_app
    from kernel_core.server.lifecycle import serve

    llm_engine = build_engine(args)
    for name, path in args.adapter:
        llm_engine.load_adapter(name, path)
    settings = ServerSettings(
        model_name=model_name, api_key=api_key, adapter_dir=adapter_dir, shutdown_timeout=args.shutdown_timeout,
        max_request_bytes=args.max_request_bytes, request_read_timeout=args.request_read_timeout,
    )
    app = create_app(AsyncLLMEngine(llm_engine), settings, adapters=dict(args.adapter))
    on_ready = None
    if args.print_examples:
        from kernel_core.server import examples

        def on_ready(host: str, port: int) -> None:
            text = examples.render(examples.base_url(host, port), model_name, names, api_key=api_key is not None)
            print(f"\n{text}", flush=True)

    serve(app, host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level,
          on_ready=on_ready)
    return 0


def build_engine(args: argparse.Namespace):
    """The step-level engine for ``kcore serve``'s options; LoRA is on when adapters may be served."""
    from kernel_core.config import EngineConfig
    from kernel_core.engine.llm_engine import LLMEngine

    options = dict(
        max_model_len=args.max_model_len, kv_cache_memory=args.kv_cache_memory, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=args.num_kv_blocks,
        request_timeout=args.request_timeout, max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras,
        moe_kernel=args.moe_kernel, moe_quantization=args.moe_quantization, plugin_options=plugin_options(args),
        tensor_parallel_size=args.tensor_parallel_size, distributed_executor=args.distributed_executor,
    )
    if args.adapter or args.adapter_dir is not None:
        rank = args.max_lora_rank or max([16, *(adapter_rank(path) for _, path in args.adapter)])
        options.update(enable_lora=True, max_lora_rank=rank)
        virtual = max([0, *(adapter_virtual_tokens(path) for _, path in args.adapter)])
        if virtual > EngineConfig.model_fields["max_virtual_tokens"].default:  # --adapter ones must load
            options.update(max_virtual_tokens=virtual)
    try:
        config = EngineConfig(model=args.model, **{key: value for key, value in options.items() if value is not None})
    except ValueError as exc:
        raise KernelCoreError(f"invalid engine options: {exc}") from None
    return LLMEngine(config)


def _adapter_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path
