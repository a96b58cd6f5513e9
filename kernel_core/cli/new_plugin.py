"""``kcore new-plugin``: start a plugin package from the kernel-core-sdk template of its kind."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from kernel_core.contracts.records import PluginKind
from kernel_core.errors import KernelCoreError

KIND_HELP = {
    PluginKind.PLATFORM: "a CPU-like platform at priority -10, selected with KERNEL_CORE_PLATFORM",
    PluginKind.SCHEDULER_POLICY: "shortest-prompt-first ordering",
    PluginKind.CACHE_MANAGER: "a block allocator without prefix caching",
    PluginKind.ATTENTION_BACKEND: "paged-KV gather + torch SDPA, request by request",
    PluginKind.MOE_KERNEL: "a per-expert loop of SwiGLU MLPs",
    PluginKind.LORA_KERNEL: "batched LoRA for serving: per-token gathers of adapter factors + bmm",
    PluginKind.TUNER: "a learned per-output-channel scale (IA3-like) with merge/unmerge",
    PluginKind.MODEL_ARCHITECTURE: "the Llama-family forward to adapt, at priority -10",
    PluginKind.EXECUTOR: "one worker in the engine's process, at priority -10",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    kinds = "\n".join(f"  {kind.value:<19} {text}" for kind, text in KIND_HELP.items())
    parser = subparsers.add_parser(
        "new-plugin",
        help="create a plugin package from a template",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write kernel-core-NAME/: a pip-installable plugin package with its `kernel_core` entry\n"
            "point, a small working implementation of KIND, a README on publishing it, and tests\n"
            "that run the kernel-core-sdk conformance suite for KIND (needs kernel-core-sdk).\n\n"
            f"KIND, and what its template implements:\n{kinds}"
        ),
        epilog="Then: python -m pip install -e './kernel-core-NAME[test]' && python -m pytest kernel-core-NAME",
    )
    parser.add_argument(
        "kind", metavar="KIND", choices=[kind.value for kind in PluginKind], help="what the plugin provides"
    )
    parser.add_argument(
        "name", metavar="NAME", help="the implementation's name: lowercase letters, digits and dashes, e.g. fair-share"
    )
    parser.add_argument("--dir", type=Path, default=Path("."), help="folder to create the package in (default: .)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("kernel_core_sdk") is None:
        raise KernelCoreError(
            "kcore new-plugin needs the plugin templates: install kernel-core-sdk "
            "(kcore install kernel-core-sdk)"
        )
    from kernel_core_sdk.scaffold import create_plugin

    target = create_plugin(PluginKind(args.kind), args.name, args.dir)
    print(f"created {target}/ ({args.kind} {args.name!r})")
    print("next:")
    print(f"  python -m pip install -e '{target}[test]'")
    print(f"  python -m pytest {target}")
    print("  kcore plugins list")
    return 0
