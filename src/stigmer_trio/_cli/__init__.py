# The command line (`python -m stigmer_trio`): _main parses and dispatches, _settings resolves the
# configuration (flags > STIGMER_TRIO_* environment > TOML file > defaults) and hands it to a detached
# daemon, _commands runs each command. Rule: the only package that touches argv, the environment and
# stdout/stderr; its hot paths (--help, --version, `status`, `up` when a daemon already runs, `stop`
# when nothing runs) are stdlib only: trio, temporalio, attrs and psutil are imported inside the code
# paths that really start or stop something.
from __future__ import annotations

import contextlib
import os
import sys

from ._main import main

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["main", "run"]


def run() -> NoReturn:
    """The process's entry point (`python -m stigmer_trio`, the `stigmer-trio` script): main(), then leave
    at once. Every command has closed what it wrote when main returns, so the interpreter's finalization
    (tearing down every imported module: 10-30 ms measured, more than a hot `status` does) is skipped;
    so is a crash of temporalio's threads at exit after `demo`. Call `main` to stay in the process."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that left (`status | head`), closed
            stream.flush()
    os._exit(code)
