"""systemd: the notification protocol's messages and the daemon's notifier (a real AF_UNIX datagram socket
standing in for systemd), and the text of `systemd-unit` (ExecStart quoting checked against systemd's
rules, and by `systemd-analyze verify` where it exists)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from stigmer_trio._boundary._sdnotify import (
    SystemdNotifier,
    format_message,
    notify_address,
    status_for,
    watchdog_interval,
)
from stigmer_trio._cli._common import UsageError
from stigmer_trio._cli._main import main
from stigmer_trio._cli._systemd import STOP_MARGIN, exec_word, render_unit, stop_timeout
from stigmer_trio._core._events import (
    ConnectionStateChanged,
    RestartLimitExceeded,
    ServerExited,
    ServerReady,
    WorkerStateChanged,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# Paths and arguments a unit must carry unchanged: spaces, specifiers, variables, quotes, escapes, UTF-8.
AWKWARD = [
    "/srv/plain_dir-1.0",
    "/srv/with space",
    "/srv/50%done",
    "/srv/%h and %%",
    "/srv/$HOME/${USER}/$$",
    '/srv/"double"',
    "/srv/'single'",
    "/srv/back\\slash\\",
    "/srv/semi;colon",
    "/srv/ünïcødé/日本",
    "/srv/tab-free\u00a0nbsp",
]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket: what systemd listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


Keep = Callable[[SystemdNotifier | None], SystemdNotifier]


@pytest.fixture
def keep() -> Iterator[Keep]:
    """Closes the notifiers (their sockets) a test made."""
    made: list[SystemdNotifier] = []

    def keep(notifier: SystemdNotifier | None) -> SystemdNotifier:
        assert notifier is not None
        made.append(notifier)
        return notifier

    yield keep
    for notifier in made:
        notifier.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock`, without waiting for more."""
    found = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                found.append(sock.recv(65536))
            except BlockingIOError:
                return found
    finally:
        sock.settimeout(timeout)


def systemd_words(line: str) -> list[str]:
    """An ExecStart= value split and unescaped by systemd's documented rules: words separated by
    whitespace, "..." or '...' quoting, C escapes (\\\\ \\" \\' \\n ...), then %% -> % (specifiers), then
    $$ -> $ in the arguments (the executable's path gets no variable expansion)."""
    escapes = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "s": " "}
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        word = ""
        quote = None
        while i < len(line) and (quote is not None or line[i] not in " \t"):
            char = line[i]
            if char == "\\":
                word += escapes[line[i + 1]]
                i += 2
                continue
            if quote is None and char in "\"'":
                quote = char
            elif char == quote:
                quote = None
            else:
                word += char
            i += 1
        assert quote is None, f"unbalanced quoting: {line!r}"
        assert "%" not in word.replace("%%", ""), f"a specifier: {word!r}"
        word = word.replace("%%", "%")
        if words:
            assert "$" not in word.replace("$$", ""), f"a variable: {word!r}"
            word = word.replace("$$", "$")
        words.append(word)
    return words


def exec_start(unit: str) -> str:
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def unit_for(executable: str, state_dir: str, *, user_unit: bool = False, timeout: float = 30.0) -> str:
    command = [("the python executable", executable), ("an argument", "-P"), ("an argument", "-m"),
               ("an argument", "stigmer_trio"), ("an argument", "up"), ("an argument", "--state-dir"),
               ("--state-dir", state_dir)]  # fmt: skip
    return render_unit(
        command=command, user_unit=user_unit, user=None if user_unit else "alice", stop_timeout=timeout
    )


class TestMessages:
    def test_fields_become_lines_in_order(self) -> None:
        """One KEY=VALUE line per field, in the order given, no trailing newline."""
        assert b"READY=1\nMAINPID=42\nSTATUS=up" == format_message(
            {"READY": 1, "MAINPID": 42, "STATUS": "up"}
        )

    def test_a_value_stays_on_its_line(self) -> None:
        """A line break in a value cannot start a new KEY=VALUE (no injected READY=1)."""
        assert b"STATUS=a READY=1" == format_message({"STATUS": "a\nREADY=1"})

    def test_long_status_is_cut(self) -> None:
        """A huge error message is cut to a readable STATUS."""
        message = format_message({"STATUS": "x" * 5000})
        assert 1024 == len(message.removeprefix(b"STATUS="))
        assert message.endswith(b"...")

    def test_bad_key_is_refused(self) -> None:
        """Keys are upper-case names: anything else is a programming error."""
        with pytest.raises(ValueError, match="not a notification key"):
            format_message({"ready": 1})

    def test_path_address(self) -> None:
        assert "/run/systemd/notify" == notify_address("/run/systemd/notify")

    def test_abstract_address(self) -> None:
        """'@name' is the abstract name: a leading NUL byte."""
        assert b"\0user/1000/notify" == notify_address("@user/1000/notify")

    @pytest.mark.parametrize("value", ["relative/notify", "@", "", "vsock:2:1234"])
    def test_unusable_address(self, value: str) -> None:
        assert notify_address(value) is None


class TestWatchdogInterval:
    def test_half_the_usec(self) -> None:
        """Pings every WATCHDOG_USEC / 2, as sd_notify(3) recommends."""
        assert 5.0 == watchdog_interval({"WATCHDOG_USEC": "10000000"}, pid=7)

    def test_our_pid(self) -> None:
        assert 0.5 == watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, pid=7)

    def test_another_pid(self) -> None:
        """WATCHDOG_PID names another process: that watchdog is not ours to feed."""
        assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "8"}, pid=7) is None

    @pytest.mark.parametrize("usec", ["", "0", "-5", "ten", "1.5"])
    def test_no_or_bad_usec(self, usec: str) -> None:
        assert watchdog_interval({"WATCHDOG_USEC": usec}, pid=7) is None

    def test_bad_pid(self) -> None:
        assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, pid=7) is None


class TestStatusText:
    def test_server_exit_says_restarting(self) -> None:
        text = status_for(ServerExited("127.0.0.1:7233", 9, -9, "exited with -9"))
        assert "dev server 127.0.0.1:7233 (pid 9) gone, restarting: exited with -9" == text

    def test_server_ready(self) -> None:
        text = status_for(ServerReady("127.0.0.1:7233", 9, adopted=False, ready_after=0.4))
        assert "dev server ready at 127.0.0.1:7233 (pid 9); connecting" == text

    def test_connected(self) -> None:
        assert "connected (epoch 3)" == status_for(ConnectionStateChanged("connecting", "connected", "ok", 3))

    def test_disconnected_says_reconnecting(self) -> None:
        event = ConnectionStateChanged("connected", "disconnected", "server exited", 3)
        assert "reconnecting: server exited" == status_for(event)

    def test_gave_up(self) -> None:
        event = RestartLimitExceeded(supervisor="runtime", child="devserver", restarts=5, window=60.0)
        text = status_for(event)
        assert text is not None
        assert text.startswith("failed: supervisor 'runtime' gave up on child 'devserver'")

    def test_other_events_change_nothing(self) -> None:
        assert status_for(WorkerStateChanged("q", running=True, epoch=1, reason="")) is None
        assert status_for(ConnectionStateChanged("connected", "closed", "shutdown", 1)) is None


class TestNotifier:
    def test_from_environ_takes_the_variables(self, keep: Keep, listener: socket.socket) -> None:
        """No child of the daemon inherits NOTIFY_SOCKET / WATCHDOG_*; the watchdog is ours."""
        environ = {
            "NOTIFY_SOCKET": listener.getsockname(),
            "WATCHDOG_USEC": "3000000",
            "WATCHDOG_PID": str(os.getpid()),
            "PATH": "/bin",
        }
        notifier = keep(SystemdNotifier.from_environ(environ))
        assert {"PATH": "/bin"} == environ
        assert 1.5 == notifier.watchdog

    def test_not_under_systemd(self) -> None:
        assert SystemdNotifier.from_environ({"WATCHDOG_USEC": "1000000"}) is None

    def test_unusable_address_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, "stigmer_trio.systemd"):
            assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "relative"}) is None
        assert "neither an absolute path nor an '@' name" in caplog.text

    def test_ready_names_our_pid(self, keep: Keep, listener: socket.socket) -> None:
        notifier = keep(SystemdNotifier(listener.getsockname(), None, pid=1234))
        assert notifier.ready("ready: Temporal at x")
        assert b"READY=1\nMAINPID=1234\nSTATUS=ready: Temporal at x" == listener.recv(4096)

    def test_abstract_socket(self, keep: Keep) -> None:
        """An '@' name reaches a socket bound in the abstract namespace."""
        name = f"@stigmer-trio-test-{os.getpid()}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name[1:])
            sock.settimeout(2.0)
            notifier = keep(SystemdNotifier.from_environ({"NOTIFY_SOCKET": name}))
            assert notifier.status("hello")
            assert b"STATUS=hello" == sock.recv(4096)

    def test_events_set_status_until_stopping(self, keep: Keep, listener: socket.socket) -> None:
        """After STOPPING=1 the stop's own events do not read as restarts."""
        notifier = keep(SystemdNotifier(listener.getsockname(), None, pid=1))
        notifier.on_event(ConnectionStateChanged("connecting", "connected", "ok", 1))
        notifier.stopping("stopping (SIGTERM)")
        notifier.stopping("stopping again")
        notifier.on_event(ServerExited("127.0.0.1:7233", 9, 0, "stopped by the runtime"))
        assert [b"STATUS=connected (epoch 1)", b"STOPPING=1\nSTATUS=stopping (SIGTERM)"] == drain(listener)

    def test_failure_never_raises_and_is_logged_once(
        self, keep: Keep, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nobody listening: every send returns False, the daemon goes on, one warning in its log."""
        notifier = keep(SystemdNotifier(str(tmp_path / "nobody"), 0.5, pid=1))
        with caplog.at_level(logging.WARNING, "stigmer_trio.systemd"):
            assert not notifier.send({"WATCHDOG": 1})
            assert not notifier.ready("ready")
            notifier.on_event(ConnectionStateChanged("connecting", "connected", "ok", 1))
        assert 1 == len(caplog.records)
        assert "cannot notify systemd" in caplog.text

    def test_full_queue_drops_instead_of_blocking(self, keep: Keep, listener: socket.socket) -> None:
        """A systemd that does not read: sends fail at once (non-blocking), never stall the caller."""
        notifier = keep(SystemdNotifier(listener.getsockname(), None, pid=1))
        began = time.monotonic()
        results = [notifier.status("x" * 1000) for _ in range(2000)]
        assert time.monotonic() - began < 2.0
        assert not all(results)

    async def test_watchdog_pings_come_from_the_trio_loop(self, keep: Keep, listener: socket.socket) -> None:
        """WATCHDOG=1 at the interval while the loop runs, none while it is blocked (a thread's pings
        would go on): a wedged loop is what systemd's watchdog must see."""
        notifier = keep(SystemdNotifier(listener.getsockname(), 0.05, pid=1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.serve_watchdog)
            await trio.sleep(0.5)
            running = drain(listener)
            time.sleep(0.5)  # on purpose: the wedged loop
            wedged = drain(listener)
            nursery.cancel_scope.cancel()
        assert 5 <= len(running) <= 12, running
        assert set(running) == {b"WATCHDOG=1"}
        assert [] == wedged

    async def test_no_watchdog_returns_at_once(self, keep: Keep, listener: socket.socket) -> None:
        notifier = keep(SystemdNotifier(listener.getsockname(), None, pid=1))
        with trio.fail_after(1):
            await notifier.serve_watchdog()
        assert [] == drain(listener)


class TestExecWord:
    def test_plain_word_unchanged(self) -> None:
        assert "/srv/state_dir-1.0" == exec_word("/srv/state_dir-1.0", what="--state-dir")

    def test_specials_are_quoted_and_escaped(self) -> None:
        """Spaces quoted; % as %%; $ as $$; quotes and backslashes C-escaped."""
        assert '"/a b/50%%/$$x/\\"q\\"/\\\\"' == exec_word('/a b/50%/$x/"q"/\\', what="--state-dir")

    def test_executable_keeps_its_dollar(self) -> None:
        """systemd expands no variable in the executable's path: $ stays single there."""
        assert '"/opt/my env$/python"' == exec_word("/opt/my env$/python", what="x", executable=True)

    @pytest.mark.parametrize("path", AWKWARD)
    def test_systemd_reads_back_the_same_words(self, path: str) -> None:
        """The ExecStart line, split by systemd's rules, is exactly the command."""
        unit = unit_for("/opt/venv/bin/python", path)
        assert ["/opt/venv/bin/python", "-P", "-m", "stigmer_trio", "up", "--state-dir", path] == (
            systemd_words(exec_start(unit))
        )

    @pytest.mark.parametrize("path", ["/srv/a\nb", "/srv/a\tb", "/srv/\x7f", "/srv/\udcff"])
    def test_inexpressible_is_a_usage_error(self, path: str) -> None:
        with pytest.raises(UsageError, match=r"^--state-dir .* cannot be written in a systemd unit"):
            exec_word(path, what="--state-dir")

    @pytest.mark.parametrize("path", ['/opt/"v"/python', "/opt/v\\/python", "/opt/it's/python"])
    def test_executable_systemd_refuses(self, path: str) -> None:
        with pytest.raises(UsageError, match="systemd refuses quotes and backslashes"):
            exec_word(path, what="the python executable", executable=True)


class TestUnitText:
    def test_system_unit(self) -> None:
        """Type=notify with the foreground `up`, its watchdog, KillMode=mixed, run as a named user."""
        lines = unit_for("/opt/venv/bin/python", "/srv/state", timeout=30.0).splitlines()
        expected = ["Type=notify", "NotifyAccess=main", "Restart=on-failure", "RestartSec=2s",
                    "WatchdogSec=10s", "KillMode=mixed", "TimeoutStopSec=30s", "User=alice",
                    "WantedBy=multi-user.target"]  # fmt: skip
        assert [] == [line for line in expected if line not in lines]
        command = "/opt/venv/bin/python -P -m stigmer_trio up --state-dir /srv/state"
        assert f"ExecStart={command}" in lines

    def test_user_unit(self) -> None:
        """--user: WantedBy=default.target, no User= (a user manager runs it as that user)."""
        text = unit_for("/opt/venv/bin/python", "/home/a/.local/state/stigmer_trio", user_unit=True)
        assert "WantedBy=default.target" in text.splitlines()
        assert "User=" not in text
        assert "network-online" not in text  # a user manager has no such target

    def test_stop_timeout_covers_the_daemons_own_bound(self, tmp_path: Path) -> None:
        """TimeoutStopSec > shutdown_timeout + the server's stop_timeout (the file's values)."""
        file = {"shutdown_timeout": 20.0, "dev_server": {"stop_timeout": 7.0}}
        assert 27.0 + STOP_MARGIN == stop_timeout(file, tmp_path)
        assert 15.0 + 5.0 + STOP_MARGIN == stop_timeout({}, tmp_path)
        assert 15.0 + STOP_MARGIN == stop_timeout({"external": "10.0.0.1:7233"}, tmp_path)

    def test_bad_file_is_a_usage_error(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match="shutdown_timeout"):
            stop_timeout({"shutdown_timeout": -1}, tmp_path)


class TestCommand:
    def test_prints_the_unit(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The state dir resolved as `up` would, and --config, both absolute in ExecStart."""
        config = tmp_path / "my config.toml"
        config.write_text("shutdown_timeout = 40.0\n")
        state = tmp_path / "st 1%"
        code = main(["systemd-unit", "--state-dir", str(state), "--config", str(config)], env={})
        out = capsys.readouterr().out
        assert 0 == code
        words = systemd_words(exec_start(out))
        assert ["up", "--state-dir", str(state), "--config", str(config)] == words[4:]
        assert os.path.abspath(sys.executable) == words[0]
        assert "TimeoutStopSec=55s" in out.splitlines()
        assert not state.exists()  # prints; creates nothing

    def test_user_unit_default_state_dir(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--user: the state dir under the user's XDG state home."""
        code = main(["systemd-unit", "--user"], env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
        assert 0 == code
        assert (
            str(tmp_path / "xdg" / "stigmer_trio") == systemd_words(exec_start(capsys.readouterr().out))[-1]
        )

    def test_inexpressible_state_dir(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """One line naming the flag and the value, exit 2, nothing printed on stdout."""
        code = main(["systemd-unit", "--state-dir", str(tmp_path / "a\nb")], env={})
        captured = capsys.readouterr()
        assert 2 == code
        assert "" == captured.out
        assert 1 == len(captured.err.splitlines())
        assert "--state-dir" in captured.err
        assert "\\n" in captured.err

    def test_environment_settings_are_warned_about(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """STIGMER_TRIO_* of this shell would not reach the unit's daemon: said on stderr."""
        code = main(["systemd-unit", "--state-dir", str(tmp_path)], env={"STIGMER_TRIO_PORT": "7300"})
        assert 0 == code
        assert "STIGMER_TRIO_PORT will not reach it" in capsys.readouterr().err

    @pytest.mark.parametrize("argv", [["up", "--detach"], ["restart"]])
    def test_detach_under_systemd_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
    ) -> None:
        """A Type=notify service must run the foreground `up`: --detach / restart say so, exit 2."""
        state = tmp_path / "state"
        code = main([*argv, "--state-dir", str(state)], env={"NOTIFY_SOCKET": "/run/systemd/notify"})
        err = capsys.readouterr().err
        assert 2 == code
        assert "NOTIFY_SOCKET is set" in err
        assert "foreground" in err
        assert not state.exists()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
class TestSystemdAnalyze:
    """systemd's own parser: it reports bad quoting, and a first word it does not read back as our
    executable's path is "not executable: No such file"."""

    def verify(self, unit: str, where: Path, *, user: bool = False) -> subprocess.CompletedProcess[str]:
        path = where / "stigmer-trio-test.service"
        path.write_text(unit)
        runtime = where / "runtime"  # a user manager's runtime dir (there is no user session here)
        runtime.mkdir(mode=0o700, exist_ok=True)
        return subprocess.run(
            [str(SYSTEMD_ANALYZE), *(["--user"] if user else []), "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        )

    @pytest.mark.parametrize("path", AWKWARD)
    def test_verify_accepts_awkward_state_dirs(self, tmp_path: Path, path: str) -> None:
        result = self.verify(unit_for(os.path.realpath("/bin/true"), path), tmp_path)
        assert (0, "") == (result.returncode, result.stderr), result.stderr

    @pytest.mark.parametrize("name", ["py thon", "50%py", "$py", "pÿthon", "semi;py"])
    def test_verify_reads_back_an_awkward_executable(self, tmp_path: Path, name: str) -> None:
        """The executable's path, written our way, is the file systemd finds."""
        directory = tmp_path / f"venv {name}"
        directory.mkdir()
        executable = directory / name
        shutil.copy("/bin/true", executable)
        executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
        result = self.verify(unit_for(str(executable), str(tmp_path / "state")), tmp_path)
        assert (0, "") == (result.returncode, result.stderr), result.stderr

    def test_verify_accepts_the_user_unit(self, tmp_path: Path) -> None:
        unit = unit_for(os.path.realpath("/bin/true"), str(tmp_path / "state dir"), user_unit=True)
        result = self.verify(unit, tmp_path, user=True)
        assert (0, "") == (result.returncode, result.stderr), result.stderr

    def test_verify_catches_a_wrong_path(self, tmp_path: Path) -> None:
        """The check can fail: a path that does not exist is reported."""
        result = self.verify(unit_for(str(tmp_path / "no such python"), str(tmp_path)), tmp_path)
        assert 0 != result.returncode
        assert "No such file" in result.stderr
