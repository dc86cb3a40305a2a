"""Scenario apps (tests/integration/apps/*.py) run in a child process, and their reports judged.

temporalio can crash the interpreter at exit after a Worker ran, so every scenario in which a Worker
runs lives in a child that reports JSON lines ({"step": ...}) and leaves with os._exit: a test judges
the lines, never a lucky exit code. Afterwards, whatever the child left running that names its state
dir (only ours can) is killed and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

Steps = dict[str, dict[str, Any]]


def leftovers(state: Path, port: int | None = None) -> list[str]:
    """Kill what a child left running: processes naming `state`, or dev servers on `port` whose HOME is
    under `state` (only ours can be); their command lines."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            ours = str(state) in cmdline or (
                port is not None
                and "start-dev" in cmdline
                and str(port) in cmdline
                and process.environ().get("HOME", "").startswith(str(state))
            )
            if ours:
                found.append(cmdline)
                process.kill()
                process.resume()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def run_scenario(app: Path, *args: str, state: Path, timeout: float, port: int | None = None) -> Steps:
    """Run `python APP ARGS`; its report lines by step. Fails with the child's traceback on an error,
    when it did not finish ("done"), or when it left anything running. The lines are kept beside the
    state dir for a post-mortem."""
    try:
        result = subprocess.run(
            [sys.executable, str(app), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    finally:
        left = leftovers(state, port)
    (state.parent / "report.jsonl").write_text(result.stdout)
    (state.parent / "stderr.txt").write_text(result.stderr)
    steps = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            steps[record["step"]] = record
    assert "error" not in steps, steps["error"]["traceback"]
    assert "done" in steps, (result.stdout[-2000:], result.stderr[-2000:])
    assert [] == left
    return steps
