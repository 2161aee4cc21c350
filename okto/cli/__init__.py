"""The `okto` command line.

Each subcommand lives in its own module with `add_parser(subparsers)` and
`run(args) -> int`. Modules must not import torch at import time, so that
`okto --help` and `okto check` start fast; heavy imports go inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from okto import __version__
from okto.errors import EXIT_BROKEN_PIPE, EXIT_INVALID, OktoError

# Subcommand modules, in the order `okto --help` lists them.
COMMANDS = ("check", "schema", "init", "train", "plan", "bench", "infer", "chat", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okto",
        description="Train and run language models from .okt files.",
    )
    parser.add_argument("--version", action="version", version=f"okto {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"okto.cli.{name}").add_parser(subparsers)
    return parser


def _escape_what_the_terminal_cannot_show() -> None:
    """Characters stdout's encoding lacks (generated text on an ASCII or cp1252 console,
    PYTHONIOENCODING=ascii) print as escapes, as they do on stderr, instead of ending the
    command with a UnicodeEncodeError once all the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_INVALID
    if args.command is None:
        parser.print_help()
        return EXIT_INVALID
    _escape_what_the_terminal_cannot_show()
    try:
        return args.run(args)
    except OktoError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whatever read stdout stopped (`okto infer ... | head`): end quietly, as `yes | head`
        # does, with SIGPIPE's code; stdout goes to devnull so that Python's last flush at
        # exit does not fail again with "Exception ignored ... BrokenPipeError"
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
