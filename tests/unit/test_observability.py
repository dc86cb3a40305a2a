"""Metrics, event logs and endpoint config: pure logic, fed with event records; no I/O, no trio."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stigmer_trio import ConfigError
from stigmer_trio._core._config import HttpConfig, parse_http, resolve
from stigmer_trio._core._events import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    ConnectionStateChanged,
    FailFastRejected,
    HealthChecked,
    RestartLimitExceeded,
    ServerExited,
    ServerReady,
    WorkerStateChanged,
)
from stigmer_trio._observe._logs import EventLog, JsonFormatter, describe, event_fields
from stigmer_trio._observe._metrics import Metrics
from stigmer_trio._tree._serve_http import readiness


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back with prometheus-client's own parser."""
    text = metrics.exposition().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def exited(pid: int = 7, reason: str = "exited with code -9") -> ServerExited:
    return ServerExited("127.0.0.1:7233", pid, -9, reason)


def ready(pid: int = 8) -> ServerReady:
    return ServerReady("127.0.0.1:7233", pid, adopted=False, ready_after=0.2)


def restart(name: str, supervisor: str = "runtime") -> ChildRestartScheduled:
    return ChildRestartScheduled(name, supervisor, attempt=1, delay=0.0, cause=name)


class TestMetrics:
    def test_every_contract_name_is_exposed_before_any_event(self) -> None:
        """All eleven metric names of the contract exist at start (a dashboard never sees gaps)."""
        metrics = Metrics()
        metrics.add_worker("q")
        metrics.add_child("devserver")
        names = {name for name, _ in samples(metrics)}
        for name in (
            "stigmer_devserver_up",
            "stigmer_devserver_restarts_total",
            "stigmer_devserver_crash_to_ready_seconds_count",
            "stigmer_connection_state",
            "stigmer_reconnects_total",
            "stigmer_health_check_seconds_count",
            "stigmer_health_check_failures_total",
            "stigmer_worker_running",
            "stigmer_worker_restarts_total",
            "stigmer_failfast_rejections_total",
            "stigmer_supervisor_restarts_total",
        ):
            assert name in names

    def test_devserver_crash_counts_one_restart_and_observes_crash_to_ready(self) -> None:
        """exit -> restart -> ready: up 1 -> 0 -> 1, restarts +1, one crash-to-ready sample of 0.25 s."""
        clock = FakeClock()
        metrics = Metrics(clock=clock)
        metrics.on_event(ready(7))
        assert 1.0 == value(metrics, "stigmer_devserver_up")
        metrics.on_event(exited(7))
        assert 0.0 == value(metrics, "stigmer_devserver_up")
        metrics.on_event(restart("devserver"))
        clock.now += 0.25
        metrics.on_event(ready(8))
        assert 1.0 == value(metrics, "stigmer_devserver_up")
        assert 1.0 == value(metrics, "stigmer_devserver_restarts_total")
        assert 1.0 == value(metrics, "stigmer_devserver_crash_to_ready_seconds_count")
        assert 0.25 == pytest.approx(value(metrics, "stigmer_devserver_crash_to_ready_seconds_sum"))
        assert 1.0 == value(metrics, "stigmer_supervisor_restarts_total", child="devserver")

    def test_first_ready_is_not_a_recovery(self) -> None:
        """The first ServerReady of a run observes no crash-to-ready sample."""
        metrics = Metrics()
        metrics.on_event(ready())
        assert 0.0 == value(metrics, "stigmer_devserver_crash_to_ready_seconds_count")

    def test_crash_to_ready_measures_from_the_first_exit_of_a_loop(self) -> None:
        """Several exits before a ready: measured from the first one."""
        clock = FakeClock()
        metrics = Metrics(clock=clock)
        metrics.on_event(exited())
        clock.now += 1.0
        metrics.on_event(exited())
        clock.now += 0.5
        metrics.on_event(ready())
        assert 1.5 == pytest.approx(value(metrics, "stigmer_devserver_crash_to_ready_seconds_sum"))

    def test_connection_state_is_one_hot(self) -> None:
        """Exactly the current state's series is 1."""
        metrics = Metrics()
        metrics.on_event(ConnectionStateChanged("connecting", "connected", "connected", 1))
        states = {s: value(metrics, "stigmer_connection_state", state=s) for s in ("connecting", "connected")}
        assert {"connecting": 0.0, "connected": 1.0} == states
        assert 0.0 == value(metrics, "stigmer_connection_state", state="disconnected")

    def test_reconnects_count_epochs_after_the_first(self) -> None:
        """Epoch 1 is the first connection, not a reconnection; epochs 2 and 3 are."""
        metrics = Metrics()
        for epoch in (1, 2, 3):
            metrics.on_event(ConnectionStateChanged("connecting", "connected", "connected", epoch))
            metrics.on_event(ConnectionStateChanged("connected", "disconnected", "gone", epoch))
        assert 2.0 == value(metrics, "stigmer_reconnects_total")

    def test_health_checks_fill_the_histogram_and_count_failures(self) -> None:
        """Two probes, one failed: histogram count 2, failures 1."""
        metrics = Metrics()
        metrics.on_event(HealthChecked("a:1", True, 0.002))
        metrics.on_event(HealthChecked("a:1", False, 1.0, "deadline exceeded"))
        assert 2.0 == value(metrics, "stigmer_health_check_seconds_count")
        assert 1.0 == value(metrics, "stigmer_health_check_failures_total")

    def test_workers_running_and_restarts_per_task_queue(self) -> None:
        """Worker gauges and restarts are per task queue; other supervisors' restarts are not ours."""
        metrics = Metrics()
        metrics.add_worker("a")
        metrics.add_worker("b")
        metrics.on_event(WorkerStateChanged("a", True, 1, "polling"))
        metrics.on_event(restart("worker:b"))
        metrics.on_event(restart("worker:b", supervisor="someone-else"))
        assert 1.0 == value(metrics, "stigmer_worker_running", task_queue="a")
        assert 0.0 == value(metrics, "stigmer_worker_running", task_queue="b")
        assert 1.0 == value(metrics, "stigmer_worker_restarts_total", task_queue="b")
        assert 0.0 == value(metrics, "stigmer_worker_restarts_total", task_queue="a")
        assert 1.0 == value(metrics, "stigmer_supervisor_restarts_total", child="worker:b")

    def test_failfast_rejections_are_counted(self) -> None:
        """One FailFastRejected, one count."""
        metrics = Metrics()
        metrics.on_event(FailFastRejected("start_workflow", "disconnected"))
        assert 1.0 == value(metrics, "stigmer_failfast_rejections_total")

    def test_each_runtime_has_its_own_registry(self) -> None:
        """Two Metrics never share a counter (no global registry)."""
        first, second = Metrics(), Metrics()
        first.on_event(FailFastRejected("client", "connecting"))
        assert (1.0, 0.0) == (
            value(first, "stigmer_failfast_rejections_total"),
            value(second, "stigmer_failfast_rejections_total"),
        )


ALL_EVENTS: list[Any] = [
    ChildStarted("devserver", "runtime", 0, None),
    ChildExited("devserver", "runtime", RuntimeError("boom"), 1.5),
    ChildExited("http", "runtime", None, 3.0, stopped=True),
    restart("devserver"),
    ChildAbandoned("worker:q", "runtime", 7.0),
    RestartLimitExceeded(supervisor="runtime", child="devserver", restarts=5, window=60.0),
    ready(),
    exited(),
    ConnectionStateChanged("connecting", "connected", "connected", 1),
    ConnectionStateChanged("connected", "disconnected", "UNAVAILABLE", 1),
    ConnectionStateChanged("disconnected", "connecting", "attempt 2", 1),
    ConnectionStateChanged("connecting", "closed", "runtime stopping", 1),
    WorkerStateChanged("q", True, 1, "polling"),
    WorkerStateChanged("q", False, 1, "failed: boom"),
    HealthChecked("127.0.0.1:7233", True, 0.001),
    HealthChecked("127.0.0.1:7233", False, 1.0, "deadline"),
    FailFastRejected("start_workflow", "disconnected"),
]


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, RecordingHandler]]:
    logger = logging.getLogger(f"test.events.{id(object())}")
    handler = RecordingHandler()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.handlers.clear()


class TestEventLog:
    @pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
    def test_every_event_type_has_a_message_and_json_fields(self, event: Any) -> None:
        """describe() gives a level and one line; event_fields() is JSON-serialisable."""
        level, message = describe(event)
        assert level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
        assert message
        assert "\n" not in message
        json.dumps(event_fields(event))

    def test_every_event_is_logged_once(self, log: tuple[logging.Logger, RecordingHandler]) -> None:
        """Distinct events: one log record each, in order."""
        logger, handler = log
        hook = EventLog(logger, clock=FakeClock())
        for event in ALL_EVENTS:
            hook(event)
        assert len(ALL_EVENTS) == len(handler.records)
        assert [type(e).__name__ for e in ALL_EVENTS] == [r.stigmer_event for r in handler.records]  # type: ignore[attr-defined]

    def test_a_crash_loop_is_aggregated(self, log: tuple[logging.Logger, RecordingHandler]) -> None:
        """41 identical failures (pids differ) in 60 s: the first line, then one summary line."""
        logger, handler = log
        clock = FakeClock()
        hook = EventLog(logger, window=60.0, clock=clock)
        for pid in range(41):
            hook(exited(pid))
            clock.now += 1.0
        assert 1 == len(handler.records)
        hook.flush()
        assert 1 == len(handler.records)  # the window is still open
        clock.now += 30.0
        hook.flush()
        assert 2 == len(handler.records)
        assert handler.messages[1].endswith("(repeated 40 times in 60 s)")
        assert 40 == handler.records[1].stigmer_fields["repeated"]  # type: ignore[attr-defined]

    def test_a_repeat_after_the_window_starts_a_new_one(
        self, log: tuple[logging.Logger, RecordingHandler]
    ) -> None:
        """The summary comes before the first line of the next window."""
        logger, handler = log
        clock = FakeClock()
        hook = EventLog(logger, window=10.0, clock=clock)
        hook(exited(1))
        hook(exited(2))
        clock.now += 11.0
        hook(exited(3))
        assert 3 == len(handler.records)
        assert "repeated 1 times" in handler.messages[1]
        assert "pid 3" in handler.messages[2]

    def test_different_failures_and_recoveries_are_never_swallowed(
        self, log: tuple[logging.Logger, RecordingHandler]
    ) -> None:
        """Recoveries (INFO) are logged every time; different failures each get their line."""
        logger, handler = log
        hook = EventLog(logger, clock=FakeClock())
        for _ in range(3):
            hook(ready())
        hook(exited(reason="exited with code 1"))
        hook(exited(reason="hung: no answer"))
        assert 5 == len(handler.records)

    def test_force_flush_summarises_open_windows(self, log: tuple[logging.Logger, RecordingHandler]) -> None:
        """At shutdown, repeats not yet summarised get their line."""
        logger, handler = log
        hook = EventLog(logger, clock=FakeClock())
        for _ in range(3):
            hook(HealthChecked("a:1", False, 1.0, "deadline exceeded"))
        hook.flush(force=True)
        assert 2 == len(handler.records)
        assert "repeated 2 times" in handler.messages[1]

    def test_disabled_levels_cost_nothing_and_log_nothing(
        self, log: tuple[logging.Logger, RecordingHandler]
    ) -> None:
        """At INFO, a successful health check (DEBUG) writes nothing."""
        logger, handler = log
        logger.setLevel(logging.INFO)
        EventLog(logger)(HealthChecked("a:1", True, 0.001))
        assert [] == handler.records


class TestJsonFormatter:
    def test_event_lines_carry_ts_level_event_and_fields(
        self, log: tuple[logging.Logger, RecordingHandler]
    ) -> None:
        """One JSON object per event with the record's own fields."""
        logger, handler = log
        EventLog(logger, clock=FakeClock())(exited(42))
        line = JsonFormatter().format(handler.records[0])
        document = json.loads(line)
        assert {"ts", "level", "event", "pid", "address", "returncode", "reason", "message"} <= set(document)
        assert ("WARNING", "ServerExited", 42) == (document["level"], document["event"], document["pid"])
        assert document["ts"].endswith("+00:00")

    def test_plain_log_records_are_json_too(self) -> None:
        """A record that is not an event: event "log", with the logger and the message."""
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        record = logging.LogRecord(
            "stigmer_trio", logging.INFO, __file__, 1, "received %s", ("SIGTERM",), None
        )
        handler.emit(record)
        document = json.loads(stream.getvalue())
        assert ("log", "received SIGTERM", "stigmer_trio") == (
            document["event"],
            document["message"],
            document["logger"],
        )


class TestHttpConfig:
    def test_loopback_hosts_are_accepted(self) -> None:
        """127.0.0.1, 127.1.2.3, ::1 and localhost need no flag."""
        for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
            assert host == HttpConfig(host=host).host

    def test_non_loopback_needs_allow_remote(self) -> None:
        """0.0.0.0 without allow_remote: a ConfigError naming the host and the flag."""
        with pytest.raises(ConfigError, match=r"'0\.0\.0\.0'.*--http-allow-remote"):
            HttpConfig(host="0.0.0.0")
        assert HttpConfig(host="0.0.0.0", allow_remote=True).allow_remote

    def test_parse(self) -> None:
        """'off' is None; HOST:PORT, :PORT and PORT parse; IPv6 brackets are stripped."""
        assert parse_http("off") is None
        assert HttpConfig(host="127.0.0.1", port=9000) == parse_http("127.0.0.1:9000")
        assert HttpConfig(host="127.0.0.1", port=9000) == parse_http(":9000")
        assert HttpConfig(host="127.0.0.1", port=0) == parse_http("0")
        assert HttpConfig(host="::1", port=9) == parse_http("[::1]:9")

    @pytest.mark.parametrize("bad", ["127.0.0.1:http", "127.0.0.1:70000", "", "x:"])
    def test_bad_values_name_the_field(self, bad: str) -> None:
        """A bad --http value: one ConfigError naming 'http' and the value."""
        with pytest.raises(ConfigError, match=r"^http must be HOST:PORT"):
            parse_http(bad)

    def test_resolve_http_and_log_settings(self) -> None:
        """Flags > environment > file for http, http_allow_remote and log_format."""
        file = {"http": "127.0.0.1:9100", "log_format": "json", "log_max_bytes": 8192}
        config = resolve(flags={"state_dir": "/tmp/x"}, env={}, file=file)
        assert (HttpConfig(port=9100), "json", 8192) == (config.http, config.log_format, config.log_max_bytes)
        config = resolve(
            flags={"state_dir": "/tmp/x", "http": "off"}, env={"STIGMER_TRIO_HTTP": ":1"}, file=file
        )
        assert config.http is None
        env = {"STIGMER_TRIO_HTTP": "0.0.0.0:9", "STIGMER_TRIO_HTTP_ALLOW_REMOTE": "yes"}
        config = resolve(flags={"state_dir": "/tmp/x"}, env=env, file=file)
        assert HttpConfig(host="0.0.0.0", port=9, allow_remote=True) == config.http

    def test_allowed_hosts_and_connection_cap(self) -> None:
        """http_allow_hosts / http_max_connections: flags > env (comma list) > file; defaults () / 64;
        a bad value names the field."""
        assert ((), 64) == (HttpConfig().allow_hosts, HttpConfig().max_connections)
        file = {"http": ":9", "http_allow_hosts": ["10.0.0.5:9"], "http_max_connections": 8}
        config = resolve(flags={"state_dir": "/tmp/x"}, env={}, file=file)
        assert config.http is not None
        assert (("10.0.0.5:9",), 8) == (config.http.allow_hosts, config.http.max_connections)
        env = {"STIGMER_TRIO_HTTP_ALLOW_HOSTS": "a.example, b:1", "STIGMER_TRIO_HTTP_MAX_CONNECTIONS": "3"}
        config = resolve(flags={"state_dir": "/tmp/x"}, env=env, file=file)
        assert config.http is not None
        assert (("a.example", "b:1"), 3) == (config.http.allow_hosts, config.http.max_connections)
        flags = {"state_dir": "/tmp/x", "http_allow_hosts": ["c"], "http_max_connections": 2}
        config = resolve(flags=flags, env=env, file=file)
        assert config.http is not None
        assert (("c",), 2) == (config.http.allow_hosts, config.http.max_connections)
        with pytest.raises(ConfigError, match=r"^max_connections must be a whole number >= 1, got 0"):
            resolve(flags={**flags, "http_max_connections": 0}, env={}, file=file)
        with pytest.raises(ConfigError, match=r"^allow_hosts must be a list of host names"):
            resolve(flags={**flags, "http_allow_hosts": ["a b"]}, env={}, file=file)
        with pytest.raises(ConfigError, match=r"STIGMER_TRIO_HTTP_MAX_CONNECTIONS must be a number"):
            resolve(flags={"state_dir": "/tmp/x"}, env={"STIGMER_TRIO_HTTP_MAX_CONNECTIONS": "x"}, file=file)

    def test_bad_log_format_names_the_field(self) -> None:
        """log_format 'xml': one line naming the field and the value."""
        with pytest.raises(ConfigError, match=r"log_format must be 'text' or 'json', got 'xml'"):
            resolve(flags={"state_dir": "/tmp/x", "log_format": "xml"}, env={})


class TestReadiness:
    def test_ready(self) -> None:
        """ready True: 200-worthy, 'ready'."""
        assert (True, "ready") == readiness({"ready": True})

    def test_reasons_name_the_connection_and_the_workers(self) -> None:
        """Not ready: the connection state with its error, and each worker that does not poll."""
        status = {
            "ready": False,
            "connection": {"state": "disconnected", "epoch": 2, "last_error": "UNAVAILABLE"},
            "workers": [
                {"task_queue": "a", "running": False, "epoch": 1},
                {"task_queue": "b", "running": True, "epoch": 1},
            ],
        }
        ok, why = readiness(status)
        assert not ok
        assert (
            "connection disconnected: UNAVAILABLE; worker a not running; worker b still on an old connection"
            == why
        )


class TestDevServerTuning:
    def test_defaults(self) -> None:
        """Eager start, the transfer-queue rate, the result long poll, queue progress saved every 1 s,
        short timers on time; WAL with synchronous=normal."""
        from stigmer_trio import DevServerConfig

        config = DevServerConfig()
        assert (
            "system.enableEagerWorkflowStart=true",
            "history.transferProcessorMaxPollRPS=1000",
            'history.longPollExpirationInterval="2s"',
            'matching.updateAckInterval="1s"',
            'history.transferProcessorUpdateAckInterval="1s"',
            'history.timerProcessorUpdateAckInterval="1s"',
            'history.visibilityProcessorUpdateAckInterval="1s"',
            'history.timerProcessorMaxTimeShift="50ms"',
        ) == config.dynamic_config
        assert ("journal_mode=wal", "synchronous=normal") == config.sqlite_pragmas

    def test_from_file_and_environment(self) -> None:
        """[dev_server] lists, or comma-separated STIGMER_TRIO_* values; empty lists turn them off."""
        file = {"dev_server": {"dynamic_config": [], "sqlite_pragmas": ["journal_mode=delete"]}}
        config = resolve(flags={"state_dir": "/tmp/x"}, env={}, file=file)
        assert config.dev_server is not None
        assert ((), ("journal_mode=delete",)) == (
            config.dev_server.dynamic_config,
            config.dev_server.sqlite_pragmas,
        )
        env = {"STIGMER_TRIO_SQLITE_PRAGMAS": "journal_mode=wal, synchronous=full"}
        config = resolve(flags={"state_dir": "/tmp/x"}, env=env, file=file)
        assert config.dev_server is not None
        assert ("journal_mode=wal", "synchronous=full") == config.dev_server.sqlite_pragmas

    @pytest.mark.parametrize(
        ("field", "bad"),
        [
            ("sqlite_pragmas", "journal_mode = wal"),
            ("dynamic_config", "no-equals-sign"),
            ("sqlite_pragmas", "x=a;b"),
        ],
    )
    def test_bad_settings_name_the_field(self, field: str, bad: str) -> None:
        """A malformed KEY=VALUE: one ConfigError naming the field and the value."""
        from stigmer_trio import DevServerConfig

        with pytest.raises(ConfigError, match=rf"^{field} must be a list of KEY=VALUE"):
            DevServerConfig(**{field: [bad]})


class TestExpositionCache:
    def test_unchanged_metrics_are_not_rendered_again(self) -> None:
        """Two scrapes with no event between: the same bytes object (no second rendering)."""
        metrics = Metrics()
        assert metrics.exposition() is metrics.exposition()

    def test_every_event_invalidates(self) -> None:
        """An event between two scrapes shows in the second one."""
        metrics = Metrics()
        metrics.exposition()
        metrics.on_event(FailFastRejected("client", "connecting"))
        assert 1.0 == value(metrics, "stigmer_failfast_rejections_total")
        metrics.add_worker("late")
        assert 0.0 == value(metrics, "stigmer_worker_running", task_queue="late")
