"""The child side of tests/integration/children.py: report lines and the os._exit ending."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn


def report(**fields: Any) -> None:
    """One JSON line on stdout, flushed: the test reads them by their "step"."""
    print(json.dumps(fields), flush=True)


def child_main(run: Callable[[], int | None]) -> NoReturn:
    """Run the scenario; report "done" (when it returns None) or "error" with the traceback, then leave
    with os._exit: temporalio can crash the interpreter at exit after a Worker ran."""
    code = 0
    try:
        result = run()
        if result is None:
            report(step="done")
        else:
            code = result
    except BaseException:
        report(step="error", traceback=traceback.format_exc())
        code = 1
    sys.stdout.flush()
    os._exit(code)
