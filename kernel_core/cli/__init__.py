"""The ``kcore`` command line: one module per command, each adding its own sub-parser."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kernel_core import __version__
from kernel_core.cli import bench, chat, finetune, generate, install, new_plugin, platform, plugins, serve
from kernel_core.errors import KernelCoreError

COMMANDS = (plugins, platform, install, new_plugin, generate, chat, serve, finetune, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcore",
        description="kernel-core: fine-tune adapters and serve LLMs on one plugin-based microkernel.",
        epilog="Run `kcore COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"kernel-core {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kcore``: errors kernel-core raises on purpose print one line, no traceback."""
    logging.basicConfig(level=logging.WARNING, format="kcore: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KernelCoreError as exc:
        print(f"kcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
