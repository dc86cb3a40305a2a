# What every part of the CLI shares: the program's name, the exit codes, the user-mistake error and the
# one way to say something on stderr. Rule: stdlib only (every command imports it).
from __future__ import annotations

import sys

PROG = "stigmer_trio"

# Exit codes. status follows LSB: 0 running and ready, 1 running but not ready, 3 not running.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

LIST_LIMIT = 1000  # entries `queue` prints unless --limit says otherwise


class UsageError(Exception):
    """A user mistake: one line on stderr, exit code 2, nothing touched."""


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
