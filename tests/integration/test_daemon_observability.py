"""The daemon's observability as an operator meets it: the endpoint, its metrics, `status`, the logs.

Real daemon (`up --detach`), real temporal binary, real clock; the `Stack` of test_daemon tracks and
cleans up every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import RECOVERY, Identity, Stack, clean_env, http_get, wait_for
from prometheus_client.parser import text_string_to_metric_families

from stigmer_trio._observe._logfiles import RotatingLog

pytestmark = pytest.mark.integration


def metric(url: str, name: str, **labels: str) -> float:
    code, body = http_get(url, "/metrics")
    assert 200 == code
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def without_uptimes(report: dict[str, Any]) -> dict[str, Any]:
    """The report minus what changes by itself between two reads (uptimes)."""
    copy = json.loads(json.dumps(report))
    for part in ("daemon", "dev_server"):
        if isinstance(copy.get(part), dict):
            copy[part].pop("uptime_s", None)
    return copy


class TestEndpoint:
    def test_devserver_kill_shows_in_metrics_and_readyz(self, stack: Stack) -> None:
        """SIGKILL of the server: /readyz goes 503 then 200; restarts_total +1; one crash-to-ready
        sample; the scrape parses with prometheus-client's parser throughout."""
        report = stack.start()
        url = report["http"]["url"]
        assert url.startswith("http://127.0.0.1:")
        assert (200, b"ready\n") == http_get(url, "/readyz")
        assert 0.0 == metric(url, "stigmer_devserver_restarts_total")
        assert 1.0 == metric(url, "stigmer_devserver_up")
        assert 1.0 == metric(url, "stigmer_connection_state", state="connected")
        server = Identity.of(report["dev_server"]["pid"])
        assert server is not None
        assert server.signal(signal.SIGKILL)
        codes: list[int] = []
        deadline = time.monotonic() + RECOVERY
        while time.monotonic() < deadline:
            code, _ = http_get(url, "/readyz")
            codes.append(code)
            if 503 in codes and code == 200:
                break
            time.sleep(0.005)
        assert 503 in codes, codes[:20]
        assert 200 == codes[-1]
        assert 1.0 == metric(url, "stigmer_devserver_restarts_total")
        # The connection may reconnect a moment before the dev server child has probed every namespace
        # and reported ServerReady (which ends the crash-to-ready interval).
        wait_for(
            lambda: metric(url, "stigmer_devserver_crash_to_ready_seconds_count") == 1.0,
            RECOVERY,
            "one crash-to-ready sample",
        )
        assert 1.0 == metric(url, "stigmer_supervisor_restarts_total", child="devserver")
        assert 1.0 == metric(url, "stigmer_reconnects_total")
        assert 1.0 == metric(url, "stigmer_devserver_up")
        assert metric(url, "stigmer_health_check_seconds_count") >= 0.0

    def test_status_endpoint_equals_status_json(self, stack: Stack) -> None:
        """GET /status and `status --json` give the same document (uptimes aside)."""
        report = stack.start()
        code, body = http_get(report["http"]["url"], "/status")
        assert 200 == code
        _, again = stack.status()
        assert without_uptimes(json.loads(body)) == without_uptimes(again)
        assert {"running", "ready", "daemon", "dev_server", "connection", "workers", "http"} <= set(again)

    def test_status_without_an_endpoint_reads_the_state_files(self, stack: Stack) -> None:
        """`up --http off`: no endpoint; `status` still reports ready from runtime.json."""
        report = stack.start("--http", "off")
        assert report["http"] is None
        assert report["ready"]
        assert "connected" == report["connection"]["state"]

    def test_status_falls_back_when_the_endpoint_hangs(self, stack: Stack) -> None:
        """A stopped (SIGSTOP) daemon: `status` answers from the state files within ~1 s, exit 0/1."""
        report = stack.start()
        daemon = Identity.of(report["daemon"]["pid"])
        assert daemon is not None
        daemon.signal(signal.SIGSTOP)
        try:
            began = time.monotonic()
            code, fallback = stack.status()
            elapsed = time.monotonic() - began
        finally:
            daemon.signal(signal.SIGCONT)
        assert code in (0, 1)
        assert fallback["running"]
        assert report["dev_server"]["pid"] == fallback["dev_server"]["pid"]
        assert elapsed < 5.0

    def test_http_port_in_use_is_a_clear_failure(self, stack: Stack) -> None:
        """`up --http 127.0.0.1:P` with P taken: exit 1 naming the address; nothing left running when
        `up` returns (the daemon spawned its dev server before anything else, to boot while it imports:
        it stops it before it reports)."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = stack.up("--http", f"127.0.0.1:{port}")
        assert 1 == result.returncode
        assert f"127.0.0.1:{port} is in use" in result.stderr
        assert [] == stack.ours()
        assert not (stack.state_dir / "devserver.json").exists()


class TestLogs:
    def test_json_lines_parse_and_carry_the_fields(self, stack: Stack) -> None:
        """--log-format json: every line of daemon.log is a JSON object with ts, level, event; the
        server's exit and return are there with their fields."""
        report = stack.start("--log-format", "json")
        server = Identity.of(report["dev_server"]["pid"])
        assert server is not None
        server.signal(signal.SIGKILL)
        stack.wait_status(
            lambda code, r: code == 0 and r["dev_server"]["pid"] not in (None, server.pid),
            RECOVERY,
            "a new dev server, ready",
        )
        lines = stack.daemon_log().splitlines()
        documents = [json.loads(line) for line in lines]
        for document in documents:
            assert {"ts", "level", "event", "message"} <= set(document)
        exits = [d for d in documents if d["event"] == "ServerExited"]
        readies = [d for d in documents if d["event"] == "ServerReady"]
        assert server.pid == exits[0]["pid"]
        assert "WARNING" == exits[0]["level"]
        assert {"address", "pid", "adopted", "ready_after"} <= set(readies[-1])
        assert 2 == len(readies)

    def test_logs_prints_the_daemon_and_devserver_logs(self, stack: Stack) -> None:
        """`logs` prints daemon.log; `-n 1` its last line; `--devserver` the server's own log."""
        stack.start()
        where = ["--state-dir", str(stack.state_dir)]
        full = stack.cli("logs", *where)
        assert 0 == full.returncode
        assert "dev server started at" in full.stdout
        assert full.stdout == stack.daemon_log()
        last = stack.cli("logs", "-n", "1", *where)
        assert [full.stdout.splitlines()[-1]] == last.stdout.splitlines()
        server = stack.cli("logs", "--devserver", *where)
        assert 0 == server.returncode
        assert server.stdout.strip()

    def test_logs_follow_shows_new_lines(self, stack: Stack) -> None:
        """`logs --follow` prints what the daemon logs afterwards (here: the server's exit)."""
        report = stack.start()
        follow = subprocess.Popen(
            [sys.executable, "-m", "stigmer_trio", "logs", "--follow", "--state-dir", str(stack.state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        try:
            assert follow.stdout is not None
            os.set_blocking(follow.stdout.fileno(), False)
            seen = bytearray()

            def shows(text: bytes) -> bool:
                seen.extend(follow.stdout.read() or b"")  # type: ignore[union-attr]
                return text in seen

            wait_for(lambda: shows(b"dev server started"), 10, "the existing log in `logs --follow`")
            server = Identity.of(report["dev_server"]["pid"])
            assert server is not None
            server.signal(signal.SIGKILL)
            wait_for(lambda: shows(b"exited"), RECOVERY, "the server's exit in `logs --follow`")
        finally:
            follow.send_signal(signal.SIGINT)
            _, errors = follow.communicate(timeout=10)
        assert 130 == follow.returncode
        assert b"Traceback" not in errors

    def test_logs_without_a_log_is_one_line(self, tmp_path: Path) -> None:
        """No daemon.log yet: exit 1, one line naming the file."""
        result = subprocess.run(
            [sys.executable, "-m", "stigmer_trio", "logs", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=clean_env(),
        )
        assert 1 == result.returncode
        assert 1 == len(result.stderr.splitlines())
        assert str(tmp_path / "logs" / "daemon.log") in result.stderr


class TestShowLog:
    def test_follow_continues_across_a_rotation(self, tmp_path: Path) -> None:
        """show_log(follow=True) prints appended lines, and after copy + truncate starts from the top."""
        import io
        import threading

        from stigmer_trio._observe._logfiles import show_log

        path = tmp_path / "daemon.log"
        path.write_bytes(b"one\n")
        out = io.BytesIO()
        stop = threading.Event()
        follower = threading.Thread(
            target=show_log,
            kwargs={"path": path, "follow": True, "out": out, "poll": 0.01, "should_stop": stop.is_set},
        )
        follower.start()
        try:
            wait_for(lambda: b"one\n" == out.getvalue(), 5, "the existing line")
            with path.open("ab") as f:
                f.write(b"two\n")
            wait_for(lambda: out.getvalue().endswith(b"two\n"), 5, "the appended line")
            RotatingLog(path, max_bytes=1, backups=1).rotate_if_needed()
            with path.open("ab") as f:
                f.write(b"three\n")
            wait_for(lambda: out.getvalue().endswith(b"three\n"), 5, "the line after the rotation")
        finally:
            stop.set()
            follower.join(5)
        assert b"one\ntwo\nthree\n" == out.getvalue()
        assert b"one\ntwo\n" == (tmp_path / "daemon.log.1").read_bytes()


class TestDevServerTuning:
    def test_the_server_runs_with_the_tuned_settings(self, stack: Stack) -> None:
        """The dev server's command line has the dynamic config and pragmas; the db runs in WAL mode."""
        import psutil

        report = stack.start()
        cmdline = psutil.Process(report["dev_server"]["pid"]).cmdline()
        for value in ("history.transferProcessorMaxPollRPS=1000", "journal_mode=wal", "synchronous=normal"):
            assert value in cmdline
        assert (stack.state_dir / "temporal.db-wal").exists()
