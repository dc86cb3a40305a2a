"""The command line as a user runs it: a real interpreter in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stigmer_trio import __version__
from stigmer_trio._boundary._statefiles import FileLock, PidRecord, write_pid_file

pytestmark = pytest.mark.integration

HEAVY = ("trio", "trio_asyncio", "temporalio")


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    command = (
        [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "stigmer_trio", *args]
    )
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


class TestCli:
    def test_help(self) -> None:
        """--help lists the commands and exits 0."""
        result = run("--help")
        assert 0 == result.returncode
        for command in ("up", "stop", "restart", "status"):
            assert command in result.stdout

    def test_version(self) -> None:
        """--version prints the package version."""
        result = run("--version")
        assert (0, f"stigmer_trio {__version__}\n") == (result.returncode, result.stdout)

    def test_console_script(self) -> None:
        """The stigmer-trio script installed next to the interpreter does the same."""
        script = shutil.which("stigmer-trio", path=os.path.dirname(sys.executable))
        assert script is not None
        result = subprocess.run(
            [script, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        assert (0, f"stigmer_trio {__version__}\n") == (result.returncode, result.stdout)

    @pytest.mark.parametrize(
        "args", [("--bogus",), ("up", "--nope"), ("frobnicate",), ("status", "--port", "1")]
    )
    def test_bad_usage_is_one_line_and_exit_2(self, args: tuple[str, ...]) -> None:
        """A user mistake gets one line on stderr, exit code 2 and no traceback."""
        result = run(*args)
        assert 2 == result.returncode
        assert 1 == len(result.stderr.splitlines()), result.stderr
        assert "Traceback" not in result.stderr


class TestEntryPoint:
    def test_output_and_exit_code_survive_the_fast_exit(self, tmp_path: Path) -> None:
        """`python -m stigmer_trio` leaves through os._exit after main: what it printed is all there
        (flushed first) and its exit code is main's."""
        result = run("status", "--json", "--state-dir", str(tmp_path / "none"))
        assert 3 == result.returncode, result.stderr
        assert '"running": false' in result.stdout
        assert result.stdout.endswith("}\n")

    def test_a_reader_that_left_gets_no_traceback(self, tmp_path: Path) -> None:
        """stdout is a pipe whose reader is gone before anything is written: exit 1, stderr empty."""
        read, write = os.pipe()
        os.close(read)
        state = str(tmp_path / "s")
        try:
            result = subprocess.run(
                [sys.executable, "-m", "stigmer_trio", "status", "--json", "--state-dir", state],
                stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
            )  # fmt: skip
        finally:
            os.close(write)
        assert (1, "") == (result.returncode, result.stderr)


class TestCheapImport:
    def test_import_does_not_load_trio_or_temporalio(self) -> None:
        """`import stigmer_trio` stays cheap: neither trio nor temporalio is imported."""
        code = f"import sys, stigmer_trio; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
        result = run(code=code)
        assert (0, "[]\n") == (result.returncode, result.stdout)

    def test_help_does_not_load_trio_or_temporalio(self) -> None:
        """`python -m stigmer_trio --help` answers without importing trio or temporalio."""
        code = textwrap.dedent(
            f"""
            import os, runpy, sys
            os._exit = sys.exit  # the entry point leaves through os._exit: look at sys.modules first
            sys.argv = ["stigmer_trio", "--help"]
            try:
                runpy.run_module("stigmer_trio", run_name="__main__")
            except SystemExit as exit:
                assert exit.code == 0, exit.code
            print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
            """
        )
        result = run(code=code)
        assert (0, "[]\n") == (result.returncode, result.stderr)

    @pytest.mark.parametrize("command", ["status", "status --json", "stop", "up"])
    def test_hot_paths_stay_stdlib_only(self, command: str, tmp_path: Path) -> None:
        """status, stop with nothing running, and up while a daemon runs skip trio and temporalio."""
        state = tmp_path / "state"
        state.mkdir()
        holder = None
        if command == "up":  # pretend a daemon runs: hold its lock, write its record
            holder = FileLock(state / "runtime.lock")
            assert holder.acquire()
            record = PidRecord(os.getpid(), 0.0, ("python",), 0.0, {"address": "127.0.0.1:1", "ready": True})
            write_pid_file(state / "runtime.json", record)
        code = textwrap.dedent(
            f"""
            import os, runpy, sys
            os._exit = sys.exit  # the entry point leaves through os._exit: look at sys.modules first
            sys.argv = ["stigmer_trio", *{command.split()!r}, "--state-dir", {str(state)!r}]
            try:
                runpy.run_module("stigmer_trio", run_name="__main__")
            except SystemExit as exit:
                print("exit", exit.code, file=sys.stderr)
            print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
            """
        )
        try:
            result = run(code=code)
        finally:
            if holder is not None:
                holder.release()
        assert "[]" == result.stderr.splitlines()[-1], result.stderr
        expected = {"status": "exit 3", "status --json": "exit 3", "stop": "exit 0", "up": "exit 0"}[command]
        assert expected == result.stderr.splitlines()[-2]
        if command == "up":
            assert f"already running: daemon pid {os.getpid()}, address 127.0.0.1:1\n" == result.stdout

    def test_public_name_loads_on_first_use(self) -> None:
        """Touching a public name imports its module then, not before."""
        code = "import sys, stigmer_trio; stigmer_trio.Supervisor; print('trio' in sys.modules)"
        result = run(code=code)
        assert (0, "True\n") == (result.returncode, result.stdout)
