"""The daemon's process hygiene with the real temporal binary: it imports nothing from the directory it
was started in (foreground `python -m stigmer_trio up`, `up --detach`'s forked child and its re-executed
one, the `stigmer-trio` script) yet still loads `--worker` modules from there, moves to its state dir, raises
its open files limit, stops cleanly on SIGHUP, and refuses to rotate a log that is a planted symlink
while it keeps running.

Real processes, real clock, a private state dir and a free port per test; the `stack` fixture's
teardown leaves nothing running.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from harness import CLI_TIMEOUT, RECOVERY, Identity, Stack, clean_env, wait_for, wait_gone

pytestmark = pytest.mark.integration

# Modules the CLI or the daemon import (third-party, stdlib, and the one `from __future__` would load).
PLANTED = ("psutil", "trio", "attrs", "temporalio", "argparse", "json", "__future__")
WORKER = """
from temporalio import activity

import stigmer_trio as st


@activity.defn
async def hello(name: str) -> str:
    return f"hello {name}"


spec = st.WorkerSpec("planted-dir-q", activities=[hello], graceful_shutdown_timeout=1.0)
"""
# A worker module that starts a thread when imported: the CLI then has two threads, which a fork would
# not copy, so `up --detach` starts the daemon as a new interpreter instead.
THREADED_WORKER = (
    WORKER.replace("planted-dir-q", "threaded-q")
    + """
import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
"""
)


def plant(directory: Path) -> Path:
    """A directory whose module files, if ever imported, leave a marker file beside them."""
    directory.mkdir()
    for name in PLANTED:
        marker = directory / f"IMPORTED-{name}"
        (directory / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return directory


def markers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("IMPORTED-*"))


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert 1 == len(lines), stderr
    return lines[0]


class TestNothingFromTheCurrentDirectory:
    def test_cli_and_script_import_nothing_from_it(self, stack: Stack, tmp_path: Path) -> None:
        """`python -m stigmer_trio` and `stigmer-trio` in a directory full of planted modules: none runs."""
        here = plant(tmp_path / "planted")
        script = Path(sys.executable).parent / "stigmer-trio"
        for command in ([sys.executable, "-m", "stigmer_trio"], [str(script)]):
            result = subprocess.run(
                [*command, "status", "--json", "--state-dir", str(stack.state_dir)],
                cwd=here, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=clean_env(),
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            assert 3 == result.returncode, result.stderr
            assert [] == markers(here), command

    @pytest.mark.parametrize("how", ["forked", "re-executed"])
    def test_detached_daemon_imports_nothing_from_it_but_the_worker(
        self, stack: Stack, tmp_path: Path, how: str
    ) -> None:
        """`up --detach --worker mymod:spec` from a planted directory: the worker module is loaded from
        it and runs; no planted module is imported, by the CLI or by the daemon, whose working directory
        is its state dir. The daemon is the CLI forked (its command line: the CLI's), or, when the CLI
        has a second thread (a worker module started one), a new interpreter started `python -P`."""
        here = plant(tmp_path / "planted")
        queue = "planted-dir-q" if how == "forked" else "threaded-q"
        (here / "mymod.py").write_text(WORKER if how == "forked" else THREADED_WORKER)
        result = subprocess.run(
            [sys.executable, "-m", "stigmer_trio", *stack.up_args("--worker", "mymod:spec")],
            cwd=here, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=clean_env(),
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        stack.track_state()
        assert 0 == result.returncode, (result.stderr, stack.daemon_log())
        code, report = stack.status()
        assert 0 == code, report
        assert queue in [w["task_queue"] for w in report["workers"] if w["running"]]
        daemon = psutil.Process(report["daemon"]["pid"])
        if how == "forked":
            assert "--detach" in daemon.cmdline()  # the CLI's own command line: a fork of it
        else:
            assert "-P" in daemon.cmdline()
            assert "--detach" not in daemon.cmdline()
        assert str(stack.state_dir) == daemon.cwd()
        assert [] == markers(here)
        assert 0 == stack.stop().returncode
        assert [] == markers(here)


class TestForegroundSignals:
    def test_sighup_stops_a_foreground_daemon_like_sigterm(self, stack: Stack, tmp_path: Path) -> None:
        """Foreground `python -m stigmer_trio up` (from a planted directory, with a low soft open files
        limit): SIGHUP (its terminal closed) stops it gracefully, exit 0 like SIGTERM: its dev server
        is gone, runtime.json and devserver.json removed. Meanwhile it imported nothing from the
        directory, ran in its state dir and had raised the soft limit to the hard one."""
        here = plant(tmp_path / "planted")
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft = min(256, hard)
        up = [sys.executable, "-m", "stigmer_trio", "up", "--state-dir", str(stack.state_dir),
              "--port", str(stack.port)]  # fmt: skip
        # The child lowers its own soft limit, then execs the daemon (no preexec_fn in a threaded pytest).
        lowered = (
            f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
            f"os.execv(sys.executable, {up!r})"
        )
        with subprocess.Popen(
            [sys.executable, "-c", lowered], cwd=here, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=clean_env(),
        ) as daemon:  # fmt: skip
            try:
                report = stack.wait_status(lambda code, _: code == 0, RECOVERY, "foreground daemon ready")
                assert daemon.pid == report["daemon"]["pid"]
                server = Identity.of(report["dev_server"]["pid"])
                assert server is not None
                me = psutil.Process(daemon.pid)
                assert str(stack.state_dir) == me.cwd()
                assert (hard, hard) == me.rlimit(psutil.RLIMIT_NOFILE)
                daemon.send_signal(signal.SIGHUP)
                _, stderr = daemon.communicate(timeout=RECOVERY)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.communicate()
        assert 0 == daemon.returncode, stderr
        assert "received SIGHUP: stopping" in stderr
        if soft != hard:
            assert f"open files limit raised from {soft} to {hard}" in stderr
        assert [] == wait_gone([server])
        assert not (stack.state_dir / "runtime.json").exists()
        assert not (stack.state_dir / "devserver.json").exists()
        assert 3 == stack.status()[0]
        assert [] == markers(here)


class TestLogSymlinks:
    def test_a_symlinked_server_log_is_refused_and_the_daemon_lives_on(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        """devserver.log swapped for a symlink to a big file: the running daemon's rotation refuses it
        (one line in daemon.log), the target keeps every byte, no backup is made of it, and the daemon
        and its server keep running."""
        config = tmp_path / "small-log.toml"
        config.write_text("[dev_server]\nlog_max_bytes = 4096\nlog_backups = 2\n")
        stack.start("--config", str(config))
        target = tmp_path / "precious.txt"
        content = b"precious\n" * 2000  # past log_max_bytes
        target.write_bytes(content)
        log = stack.state_dir / "logs" / "devserver.log"
        log.unlink()
        log.symlink_to(target)
        needle = f"refusing to rotate log file {str(log)!r}: it is a symlink (ELOOP)"
        wait_for(lambda: needle in stack.daemon_log(), RECOVERY, "the refusal in daemon.log")
        assert 1 == stack.daemon_log().count(needle)  # once, not at every check
        assert content == target.read_bytes()
        backup = log.with_name("devserver.log.1")
        assert not backup.exists() or b"precious" not in backup.read_bytes()
        assert 0 == stack.status()[0]

    def test_up_detach_refuses_a_symlinked_daemon_log(self, stack: Stack, tmp_path: Path) -> None:
        """logs/daemon.log a symlink: `up --detach` says so in one line, exit 1; nothing starts, the
        target is untouched."""
        target = tmp_path / "precious.txt"
        target.write_bytes(b"precious\n")
        logs = stack.state_dir / "logs"
        logs.mkdir(parents=True)
        (logs / "daemon.log").symlink_to(target)
        result = stack.up()
        assert 1 == result.returncode
        assert "refusing to open the daemon log" in one_line(result.stderr)
        assert b"precious\n" == target.read_bytes()
        assert [] == stack.ours()
        assert not (stack.state_dir / "runtime.json").exists()
