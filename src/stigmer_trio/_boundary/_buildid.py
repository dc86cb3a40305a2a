# The Workers' build id when the WorkerSpec gives none. temporalio's default (worker._worker.
# load_default_build_id) hashes the bytecode of every loaded module, reading and unmarshalling each .pyc
# (compiling the source where there is none): ~60 ms with the runtime's ~600 modules, on the Trio thread
# at the first Worker, which is on the daemon's start-up critical path. This one hashes what identifies
# the code instead (each module file's path, size and modification time, plus the interpreter's
# version): ~2 ms, the same for the same code, different whenever a module file changes. Rule: stdlib
# only, no I/O but stat.
from __future__ import annotations

import hashlib
import os
import sys

__all__ = ["build_id"]

_memo: str | None = None


def build_id() -> str:
    """A build id for this process's code (memoized: computed at the first Worker, as the SDK does)."""
    global _memo
    if _memo is None:
        digest = hashlib.md5(sys.version.encode(), usedforsecurity=False)
        for name in sorted(sys.modules):
            path = getattr(sys.modules[name], "__file__", None)
            if not isinstance(path, str):
                continue  # built in, or a namespace package: nothing on disk to change
            try:
                info = os.stat(path)
            except OSError:
                continue
            digest.update(f"{name}\0{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        _memo = digest.hexdigest()
    return _memo
