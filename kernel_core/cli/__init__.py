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
#: The exit status of a command stopped by Ctrl-C: 128 + SIGINT, what a shell reports for it.
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcore",
        description="kernel-core: fine-tune adapters and serve LLMs on one plugin-based microkernel.",
        epilog="Run `kcore COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"kernel-core {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kcore``: errors kernel-core raises on purpose print one line, no traceback.

    So does Ctrl-C, which ends any command with status 130; a command may raise
    ``KeyboardInterrupt(note)`` to say what the interruption left behind.
    """
    logging.basicConfig(level=logging.WARNING, format="kcore: %(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for a command that starts itself again (kcore finetune --nproc)
    try:
        return args.func(args)
    except KernelCoreError as exc:
        print(f"kcore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        note = f"; {exc}" if str(exc) else ""
        fresh_line = "\n" if sys.stderr.isatty() else ""  # past the terminal's ^C, or a half-written line
        print(f"{fresh_line}kcore: {args.command} interrupted{note}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
