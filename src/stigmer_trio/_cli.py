# The command line: argparse, exit codes and output. Rule: the only module that touches argv, the
# environment and stdout/stderr. Its hot paths (--help, --version, and later status / up-when-running /
# stop-when-idle) are stdlib only: trio and temporalio are imported inside the commands that need them.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._version import __version__

PROG = "stigmer_trio"

# LSB-style exit codes used across the CLI.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{PROG} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Keep a Temporal stack alive: a supervised, persistent local Temporal dev server, "
            "a healthy client connection and restarted workers, under one Trio supervision tree."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("up", help="start the runtime (the supervised Temporal dev server)")
    commands.add_parser("stop", help="stop the runtime and its dev server")
    commands.add_parser("restart", help="stop, then start the runtime in the background")
    commands.add_parser("status", help="report whether the runtime is running and ready")
    return parser


def _not_implemented(command: str) -> int:
    print(
        f"{PROG}: '{command}' is not implemented yet: the dev-server supervisor and daemon come next "
        "(this release has the supervision core only); nothing was started",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m stigmer_trio`` and the ``stigmer-trio`` script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return _not_implemented(args.command)
