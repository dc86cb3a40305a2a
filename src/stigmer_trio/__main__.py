# `python -m stigmer_trio`. The interpreter put the current directory first on sys.path before any code
# of ours ran: take it out before anything else is imported, so that a file planted there (psutil.py,
# trio.py, argparse.py, ...) never runs in the CLI or the daemon. (`__init__` imports only what the
# interpreter already holds.) `--worker MODULE:ATTR` modules are still found in the current directory:
# _cli/_settings.load_worker_specs appends it to sys.path, after the installed packages. The detached
# daemon is a fork of this process (or, when it has threads, started with `python -P`), and the
# `stigmer-trio` script never has the directory on it.
import os
import sys

if not sys.flags.safe_path and sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.getcwd():
    del sys.path[0]

from ._cli import run  # after the sys.path fix, on purpose

run()
