"""``kcore install``: pip inside kcore's own interpreter, so plugins land where kcore finds them."""

from __future__ import annotations

import argparse
import subprocess
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "install",
        help="pip-install plugins into kcore's own environment",
        description=(
            "Install packages (usually kernel-core-<thing> plugins) with the pip of the Python "
            "that runs kcore, whichever environment your shell's pip points at."
        ),
    )
    parser.add_argument("packages", nargs="+", metavar="NAME", help="package names, paths or pip requirement specs")
    parser.add_argument("-U", "--upgrade", action="store_true", help="upgrade packages already installed")
    parser.add_argument("-e", "--editable", action="store_true", help="install local folders in editable mode")
    parser.set_defaults(func=run)


def pip_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "pip", "install"]
    if args.upgrade:
        command.append("--upgrade")
    for package in args.packages:
        command += ["-e", package] if args.editable else [package]
    return command


def run(args: argparse.Namespace) -> int:
    return subprocess.call(pip_command(args))
