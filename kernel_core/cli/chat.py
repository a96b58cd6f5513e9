"""``kcore chat``: a conversation with a model on kernel-core's engine, replies streamed.

On a terminal it is an interactive prompt. With stdin piped, each line is one user message and
each reply one answer on stdout, so a conversation can be scripted (and tested).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from kernel_core.cli.generate import (
    add_engine_options,
    add_sampling_options,
    build_engine,
    chat_prompt,
    sampling_params,
    stream_text,
)
from kernel_core.errors import KernelCoreError

EXIT, RESET = "/exit", "/reset"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``chat`` sub-parser; ``kernel_core.cli.main`` calls this once per process."""
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description=(
            "Chat with a model through its chat template, replies streamed as they are generated; "
            f"the conversation so far goes with every message. Type {RESET} to start over, {EXIT} "
            "or Ctrl-D to quit; Ctrl-C stops a reply, and at the prompt quits with status 130. With "
            "stdin not a terminal, every line is one message and every reply is printed followed by "
            "a newline; Ctrl-C quits with status 130."
        ),
        epilog='example: printf "Hi!\\nWhat did I just say?\\n" | kcore chat --system "Be brief."',
    )
    add_engine_options(parser)
    parser.add_argument("--system", default=None, metavar="TEXT", help="a system prompt that opens the conversation")
    add_sampling_options(parser, max_tokens=512)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Answer every message until /exit or end of input.

    On a terminal, a failed or interrupted (Ctrl-C) reply is reported and the conversation goes
    on without it; piped, a failure ends the command with ``kcore``'s one-line error. Ctrl-C
    anywhere else ends it through ``kcore``'s one line and status 130.
    """
    interactive = sys.stdin.isatty()
    engine = build_engine(args)
    params = sampling_params(args)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    history = list(opening)
    if interactive:
        print(f"Chatting with {args.model}: {RESET} starts over, {EXIT} or Ctrl-D quits.", file=sys.stderr)
    for line in _lines(interactive):
        message = line.strip()
        if message == EXIT:
            break
        if message == RESET:
            history = list(opening)
            continue
        if not message:
            continue
        conversation = [*history, {"role": "user", "content": message}]
        try:
            reply = stream_text(engine, chat_prompt(engine, conversation), params, sys.stdout)
        except (KernelCoreError, KeyboardInterrupt) as exc:
            if not interactive:
                raise
            reason = str(exc) or "interrupted"
            print(f"\nkcore: error: {reason} (message dropped; {RESET} starts over)", file=sys.stderr)
            continue
        print()
        history = [*conversation, {"role": "assistant", "content": reply}]
    return 0


def _lines(interactive: bool) -> Iterator[str]:
    """The user's messages: stdin's lines, or prompted ones on a terminal until Ctrl-D."""
    if not interactive:
        yield from sys.stdin
        return
    import readline  # noqa: F401 - line editing and history for input()

    while True:
        try:
            yield input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return
