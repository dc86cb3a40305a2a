# Configuration records and their validation. Rule: pure — no trio, no I/O, no environment reads. The
# CLI gathers flags, STIGMER_TRIO_* variables and the TOML file and hands plain mappings to `resolve`,
# which applies the precedence (flags > environment > file > defaults) and explains every bad value in
# one line naming the field and the value.
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._errors import ConfigError
from ._layout import default_state_dir
from ._names import DEMO_TASK_QUEUE
from ._policy import RestartPolicy

__all__ = [
    "ConnectionConfig",
    "DevServerConfig",
    "HttpConfig",
    "OutboxConfig",
    "RuntimeConfig",
    "TlsConfig",
    "WorkerSpec",
    "http_options",
    "parse_http",
    "resolve",
    "resolve_outbox",
]

# Temporal namespace names: letters, digits, '-', '_' and '.', starting with a letter or digit.
# Every pattern here is used with fullmatch: `$` would also accept a trailing newline.
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_HOST_NAME = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
_PORT_TEXT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() also takes '²' and '٣'

# Upper bounds. Every duration is finite and at most a day (the outbox's retention: a year), every
# count bounded: a typo such as 1e308 is refused in one line instead of overflowing a deadline (or a
# SQLite integer) after the daemon has started.
MAX_SECONDS = 86_400.0
MAX_RETAIN = 366 * 86_400.0
MAX_LOG_BYTES = 1 << 40

# Dynamic config the dev server starts with. Eager workflow start: the runtime's client and workers
# share a process. The transfer-queue rate: with the server's default of 20 loads per second, every new
# workflow task waits for the next 50 ms slot (measured: ~36 ms median per task, 97 ms per one-activity
# round trip; 1000/s: 36 ms; see benchmarks/archive/eager_diag.py). The result long poll: see below.
DEFAULT_DYNAMIC_CONFIG = (
    "system.enableEagerWorkflowStart=true",
    "history.transferProcessorMaxPollRPS=1000",
    # A result() long poll misses a workflow's close now and then when its events come within ~10 ms
    # (the server's one-slot notification buffer drops the close): the caller then waits out the whole
    # poll, 20 s by default. Measured: ~0.55 such stalls per 1000 round trips; with 2 s, none over 5 s in
    # 14 030 (a miss costs 2 s). The value is JSON, hence the quotes.
    'history.longPollExpirationInterval="2s"',
    # Crash recovery: where the task queues and the history queues have got to is saved every 1 min /
    # 30 s by default; a server killed in between redelivers everything since, stale tasks first. Killed
    # more often than that (the fault soak: every ~8 s), the saved levels never advance and the stale
    # backlog grows without end: normal-queue waits of 30-80 s, workflows of minutes. Saved every 1 s.
    'matching.updateAckInterval="1s"',
    'history.transferProcessorUpdateAckInterval="1s"',
    'history.timerProcessorUpdateAckInterval="1s"',
    'history.visibilityProcessorUpdateAckInterval="1s"',
    # Every read of a history queue moves the shard's earliest allowed timer to now + this shift (1 s by
    # default), so a timer or timeout shorter than that fired ~1 s late: a 0.2 s workflow.sleep took
    # 1.0-1.2 s (server source: task_key_manager.go / task_key_generator.go; measured in the soak).
    'history.timerProcessorMaxTimeShift="50ms"',
)
# SQLite: write-ahead log, fsync at checkpoints. Survives the server being killed (our crash model);
# power loss may lose the last commits but never corrupts the db. Round trip 36 -> 23 ms measured here.
DEFAULT_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
_PRAGMA = re.compile(r"[a-z_]+=[A-Za-z0-9_-]+")
_DYNAMIC = re.compile(r"[A-Za-z0-9_.]+=[!-~]+")  # KEY=VALUE, the value printable ASCII without spaces


def _settings(pattern: re.Pattern[str], example: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple) or not all(
            isinstance(v, str) and pattern.fullmatch(v) for v in value
        ):
            raise ConfigError(f"{attribute.name} must be a list of KEY=VALUE like {example!r}, got {value!r}")

    return check


# The dev server's own restarts: the first restart after a stable run is immediate, then backoff. Stable
# = ready for 1 s: a server that served and was then killed (SIGKILL, OOM, a hang) is replaced at once
# however often that happens (the restart limit still counts every one); one that fails to become ready,
# or dies within 1 s of it, backs off 0.1, 0.2, 0.4 ... 5 s. (With 10 s, a server killed every ~8 s
# climbed to the 5 s cap and recoveries grew over a run: soak, server faults only, p50 5.96 s.)
DEFAULT_DEVSERVER_POLICY = RestartPolicy(
    initial_delay=0.0, backoff=0.1, multiplier=2.0, max_delay=5.0, jitter=0.1,
    max_restarts=5, window=60.0, reset_after=1.0,
)  # fmt: skip


def _port(*, optional: bool = False, zero: bool = False) -> Any:
    low = 0 if zero else 1

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
            raise ConfigError(f"{attribute.name} must be a port number {low}-65535, got {value!r}")

    return check


def _ui_port(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            f"ui_port (--ui-port) must be a port number 0-65535 (0: a free port), got {value!r}"
        )


def _seconds(*, positive: bool = True, maximum: float = MAX_SECONDS) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not ok or not 0 <= value <= maximum or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            days = maximum / 86_400
            limit = f"at most {maximum:.0f}: {days:g} day{'' if days == 1 else 's'}"
            raise ConfigError(
                f"{attribute.name} must be a number of seconds {bound}, got {value!r} ({limit})"
            )

    return check


def _optional_seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _seconds()(instance, attribute, value)


def _count(minimum: int, maximum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(
                f"{attribute.name} must be a whole number >= {minimum}, got {value!r} (at most {maximum})"
            )

    return check


def _namespaces(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not value:
        raise ConfigError(f"{attribute.name} must be a non-empty list of namespace names, got {value!r}")
    for name in value:
        _check_namespace("namespace", name)


def _check_namespace(field: str, name: Any) -> None:
    if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
        raise ConfigError(
            f"{field} must be 2-255 letters, digits, '.', '_' or '-' starting with a letter or digit, "
            f"got {name!r}"
        )


def _namespace(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_namespace(attribute.name, value)


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(dict.fromkeys(value))  # keep order, drop repeats
    if isinstance(value, str):
        return (value,)
    return value


def _as_path(value: Any) -> Any:
    return Path(value).expanduser() if isinstance(value, str) and value else value


def _optional_path(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Path):
        raise ConfigError(f"{attribute.name} must be a non-empty path, got {value!r}")


def _path(value: str | Path) -> Path:
    return Path(value).expanduser()


def _bool(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be true or false, got {value!r}")


def _policy(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, RestartPolicy):
        raise ConfigError(f"{attribute.name} must be a RestartPolicy, got {value!r}")


@attrs.frozen(kw_only=True)
class DevServerConfig:
    """One supervised `temporal server start-dev`, always bound to 127.0.0.1.

    `http_port` / `metrics_port` None: a free port is picked at each spawn. `persist` False runs the
    server in memory (every workflow is lost at a crash); by default the db lives in the state dir.
    `ui` serves the server's Web UI on 127.0.0.1 at `ui_port`: None is the gRPC port + 1000 (8233 for
    7233, as `temporal server start-dev` does), 0 a free port picked at each spawn.
    """

    binary: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    port: int = attrs.field(default=7233, validator=_port())
    http_port: int | None = attrs.field(default=None, validator=_port(optional=True))
    metrics_port: int | None = attrs.field(default=None, validator=_port(optional=True))
    # The Web UI: on by default, like `temporal server start-dev`'s (a few MiB of RSS once used; the
    # time to ready is unchanged).
    ui: bool = attrs.field(default=True, validator=_bool)
    ui_port: int | None = attrs.field(default=None, validator=_ui_port)
    namespaces: tuple[str, ...] = attrs.field(
        default=("default",), converter=_to_tuple, validator=_namespaces
    )
    persist: bool = attrs.field(default=True, validator=_bool)
    db_filename: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    start_timeout: float = attrs.field(default=15.0, validator=_seconds())
    # A hang (SIGSTOP, deadlock) is declared within interval + failures * timeout: 1.5 s by default.
    # Healthy, the probe (check_health + DescribeNamespace) answers in ~1-8 ms (p99), also under load.
    health_interval: float = attrs.field(default=0.5, validator=_seconds())
    health_timeout: float = attrs.field(default=0.5, validator=_seconds())
    failures_to_restart: int = attrs.field(default=2, validator=_count(1, 1000))
    stop_timeout: float = attrs.field(default=5.0, validator=_seconds(positive=False))
    log_max_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_count(4096, MAX_LOG_BYTES))
    log_backups: int = attrs.field(default=3, validator=_count(0, 1000))
    dynamic_config: tuple[str, ...] = attrs.field(
        default=DEFAULT_DYNAMIC_CONFIG,
        converter=_to_tuple,
        validator=_settings(_DYNAMIC, "history.transferProcessorMaxPollRPS=1000"),
    )
    sqlite_pragmas: tuple[str, ...] = attrs.field(
        default=DEFAULT_SQLITE_PRAGMAS,
        converter=_to_tuple,
        validator=_settings(_PRAGMA, "journal_mode=wal"),
    )
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    policy: RestartPolicy = attrs.field(default=DEFAULT_DEVSERVER_POLICY, validator=_policy)
    # The server's environment beyond PATH, LANG, LC_*, TZ, TMPDIR and its own HOME: it inherits nothing
    # else of the runtime's (no TEMPORAL_* setting, no cloud credentials). Not hashed.
    env: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @env.validator
    def _check_env(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"dev_server.env must be a mapping of names to strings, got {value!r}")
        for key, item in value.items():
            if not (isinstance(key, str) and key and "=" not in key and "\0" not in key):
                raise ConfigError(f"dev_server.env: {key!r} is not an environment variable name")
            if not isinstance(item, str) or "\0" in item:
                raise ConfigError(f"dev_server.env[{key!r}] must be a string without NUL, got {item!r}")

    def __attrs_post_init__(self) -> None:
        ui = self.effective_ui_port
        if ui is None or ui == 0:
            return
        if ui > 65535:
            raise ConfigError(
                f"ui_port: the Web UI's default port, the dev server's port {self.port} + 1000 = {ui}, is "
                "above 65535; pass --ui-port N (ui_port; 0: a free port) or --no-ui (ui = false)"
            )
        for name in ("port", "http_port", "metrics_port"):
            if getattr(self, name) == ui:
                raise ConfigError(f"ui_port (--ui-port) {ui} is also the dev server's {name}; choose another")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def effective_ui_port(self) -> int | None:
        """The Web UI's port: None without a UI, 0 for a free port at each spawn, else the port (the
        configured one, or the gRPC port + 1000)."""
        if not self.ui:
            return None
        return self.port + 1000 if self.ui_port is None else self.ui_port


# Two timeouts decide how long a workflow stalls when its worker dies without a goodbye (SIGKILL, OOM;
# a graceful stop sends ShutdownWorker and hands over in ~5 ms whatever they are). Both SDK defaults
# are 10 s. Measured with benchmarks/workflow_tasks.py (the runtime + its dev server, one worker,
# BenchEcho workflows kept in flight for 30 s, server-side history times; 2 cores, load avg 2-6 from
# other test runs):
#
# STICKY_TIMEOUT (WorkerSpec.sticky_timeout -> sticky_queue_schedule_to_start_timeout): a cached
# workflow whose worker was SIGKILLed waits this long (measured 1.007 s with 1 s). But a live worker
# that is merely busy takes its sticky tasks late too, and one that misses the timeout loses its cache:
# the task goes to the normal queue (one poller of five) and is replayed there, which costs more work.
#   20 in flight:  sticky wait p99 362 ms, max 404 ms; no timeouts even at 1 s.
#   100 in flight: sticky wait p50 2.7 s, p99 3.9 s, max 4.1 s (10 s timeout: none timed out).
#     1 s: 24 % of sticky tasks timed out; those then waited p99 8.5 s (22 s with 2 busy loops) on the
#          normal queue; round trips p99 10.5 s.
#     2 s: 21 % timed out; normal queue p99 12.4 s; round trips p99 15.7 s.
#     5 s: none timed out (max 4.4 s); round trips p99 5.9 s (10 s: 4.5 s).
#   200 in flight + 2 busy loops (load 8.8), 5 s: 25 % timed out, normal queue p99 32 s.
# The sticky wait of a saturated worker is about (workflows in flight) / (its workflow tasks per s).
# So 1-2 s is unsafe once a worker is saturated (and a miss makes it worse); 5 s halves the crash stall
# and held at 100 workflows in flight here. Raise it for workers that run saturated.
STICKY_TIMEOUT = 5.0
# WORKFLOW_TASK_TIMEOUT (ConnectionConfig.workflow_task_timeout -> the `task_timeout` start option): a
# task in flight on a worker that was SIGKILLed stalls its workflow this long; a busy worker's task that
# takes longer is timed out and retried (wasted work, and the retry queues again). Started -> completed
# of workflow tasks: 20 in flight: p99 361 ms, max 456 ms (1.23 s with 2 busy loops, load 7);
# 100 in flight: p99 0.5-1.2 s, max 0.55-1.72 s; 200 in flight + 2 busy loops (load 8.8): p99 1.64 s,
# max 1.90 s, none timed out at 5 s. 5 s is ~2.6x the worst measured; 2 s would be within 1.1x.
WORKFLOW_TASK_TIMEOUT = 5.0


# The connection's reconnect backoff: 50 ms doubling to 2 s, forever.
DEFAULT_CONNECTION_POLICY = RestartPolicy(
    initial_delay=0.05, backoff=0.05, multiplier=2.0, max_delay=2.0, jitter=0.1,
    max_restarts=None, window=60.0, reset_after=10.0,
)  # fmt: skip


def _address(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not _HOST_NAME.fullmatch(host) or not _PORT_TEXT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{attribute.name} must be HOST:PORT, got {value!r}")


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{attribute.name} must be a non-empty string or None, got {value!r}")


def _optional_pem(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, bytes) or not value):
        raise ConfigError(f"{attribute.name} must be non-empty PEM bytes or None, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class TlsConfig:
    """TLS beyond the system roots: a CA to verify the server with, a client certificate and key (mTLS),
    the name to expect on the server's certificate. Files are read again at every (re)connect, so a
    rotated certificate is used from the next reconnect on; a key file readable by group or others is
    refused (as ssh does). `*_data`: the PEM itself instead of a file (a temporal.toml `data` entry or a
    TEMPORAL_TLS_*_DATA variable); never shown in repr."""

    ca_file: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    cert_file: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    key_file: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    server_name: str | None = attrs.field(default=None, validator=_optional_str)
    ca_data: bytes | None = attrs.field(default=None, validator=_optional_pem, repr=False)
    cert_data: bytes | None = attrs.field(default=None, validator=_optional_pem, repr=False)
    key_data: bytes | None = attrs.field(default=None, validator=_optional_pem, repr=False)

    def __attrs_post_init__(self) -> None:
        for kind in ("ca", "cert", "key"):
            if getattr(self, f"{kind}_file") is not None and getattr(self, f"{kind}_data") is not None:
                raise ConfigError(f"tls: give {kind}_file or {kind}_data, not both")
        has_cert = self.cert_file is not None or self.cert_data is not None
        has_key = self.key_file is not None or self.key_data is not None
        if has_cert != has_key:
            raise ConfigError(
                "tls: a client certificate needs its key and a key its certificate (cert_file and "
                f"key_file together), got {'only a certificate' if has_cert else 'only a key'}"
            )

    @property
    def files(self) -> tuple[Path, ...]:
        """The files read at each connect."""
        return tuple(p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None)


def _tls(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool | TlsConfig):
        raise ConfigError(f"tls must be true, false or a TlsConfig, got {value!r}")


@attrs.frozen(kw_only=True)
class ConnectionConfig:
    """The Temporal client connection: any address (external mode), TLS and API key included.

    `tls`: True (the system roots), a TlsConfig (CA, client certificate, server name) or False; it
    defaults to on when an `api_key` or `api_key_file` is set (off otherwise). An API key over plaintext
    (`tls=False`) is refused unless `plaintext_api_key=True` says so: it would travel in cleartext.
    `api_key_file` is read at every (re)connect (a rotated key is used from the next one on) and refused
    when group or others can read it.
    """

    address: str = attrs.field(default="127.0.0.1:7233", validator=_address)
    namespace: str = attrs.field(default="default", validator=_namespace)
    api_key: str | None = attrs.field(default=None, validator=_optional_str, repr=False)
    api_key_file: Path | None = attrs.field(default=None, converter=_as_path, validator=_optional_path)
    tls: bool | TlsConfig = attrs.field(
        default=attrs.Factory(
            lambda self: self.api_key is not None or self.api_key_file is not None, takes_self=True
        ),
        validator=_tls,
    )
    plaintext_api_key: bool = attrs.field(default=False, validator=_bool)
    health_interval: float = attrs.field(default=1.0, validator=_seconds())
    health_timeout: float = attrs.field(default=1.0, validator=_seconds())
    connect_timeout: float = attrs.field(default=5.0, validator=_seconds())
    request_timeout: float = attrs.field(default=5.0, validator=_seconds())
    # The workflow task timeout (temporalio's `task_timeout` start option) of the workflows this
    # runtime starts, unless the caller passes `task_timeout`; None leaves it to the SDK (10 s). It is
    # how long a workflow task in flight on a worker that died (SIGKILL, OOM) stalls its workflow.
    # See WORKFLOW_TASK_TIMEOUT for the measurements behind the default.
    workflow_task_timeout: float | None = attrs.field(
        default=WORKFLOW_TASK_TIMEOUT, validator=_optional_seconds
    )
    policy: RestartPolicy = attrs.field(default=DEFAULT_CONNECTION_POLICY, validator=_policy)

    def __attrs_post_init__(self) -> None:
        if self.api_key is not None and self.api_key_file is not None:
            raise ConfigError(f"connection to {self.address}: give api_key or api_key_file, not both")
        has_key = self.api_key is not None or self.api_key_file is not None
        if has_key and self.tls is False and not self.plaintext_api_key:
            raise ConfigError(
                f"connection to {self.address}: tls=False would send the api_key in cleartext; "
                "leave tls on (the default with an api_key) or set plaintext_api_key=True"
            )


def _specs(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


@attrs.frozen
class WorkerSpec:
    """A temporalio Worker the runtime keeps running on the current connection.

    `options` passes through to ``temporalio.worker.Worker`` (anything but client, task_queue,
    workflows, activities and the executors, which the runtime sets).
    """

    task_queue: str = attrs.field(validator=_optional_str)
    workflows: tuple[type, ...] = attrs.field(default=(), converter=_specs, kw_only=True)
    activities: tuple[Any, ...] = attrs.field(default=(), converter=_specs, kw_only=True)
    graceful_shutdown_timeout: float = attrs.field(
        default=5.0, kw_only=True, validator=_seconds(positive=False)
    )
    # temporalio's sticky_queue_schedule_to_start_timeout (`options` may still override it): how long
    # a workflow task waits on this worker's sticky queue before going to the normal queue. See
    # STICKY_TIMEOUT for the measurements behind the default.
    sticky_timeout: float = attrs.field(default=STICKY_TIMEOUT, kw_only=True, validator=_seconds())
    options: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)
    policy: RestartPolicy = attrs.field(
        default=RestartPolicy(max_restarts=10, window=60.0), kw_only=True, validator=_policy
    )


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1); no name resolution."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        raise ConfigError(
            f"{attribute.name} must be a host name or IP address (letters, digits, '.', '-', ':'), "
            f"got {value!r}"
        )


def _host_names(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(h, str) and _HOST_NAME.fullmatch(h) for h in value):
        raise ConfigError(
            f"{attribute.name} must be a list of host names or HOST:PORT (letters, digits, '.', '-', ':', "
            f"'[]'), got {value!r}"
        )


@attrs.frozen(kw_only=True)
class HttpConfig:
    """The control endpoint (/healthz /readyz /status /metrics). Port 0 picks a free port once.

    Loopback only unless `allow_remote`: the endpoint has no authentication.
    """

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=0, validator=_port(zero=True))
    allow_remote: bool = attrs.field(default=False, validator=_bool)
    # Host header values answered besides loopback names, `localhost` and the bound address (e.g. the
    # pod IP:port a Kubernetes probe sends); anything else gets 421 (a DNS-rebinding page cannot read).
    allow_hosts: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_host_names)
    # Connections served at once; more wait in the listen backlog (a local user cannot exhaust our fds).
    max_connections: int = attrs.field(default=64, validator=_count(1, 65_536))

    def __attrs_post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"http host {self.host!r} is not a loopback address; the endpoint has no "
                "authentication: pass --http-allow-remote (allow_remote=True) to expose it"
            )

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_http(
    value: Any, where: str = "http", *, allow_remote: bool = False, **options: Any
) -> HttpConfig | None:
    """'off' -> None; 'HOST:PORT', ':PORT' or 'PORT' -> HttpConfig (ConfigError naming `where`).
    `options`: the other HttpConfig fields (allow_hosts, max_connections)."""
    if isinstance(value, HttpConfig) or value is None:
        return value
    if isinstance(value, bool) and not value:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f"{where} must be HOST:PORT or 'off', got {value!r}")
    text = str(value).strip()
    if text.lower() in ("off", "none", "false", "no"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not _PORT_TEXT.fullmatch(port) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be HOST:PORT (port 0-65535) or 'off', got {value!r}")
    return HttpConfig(host=host, port=int(port), allow_remote=allow_remote, **options)


def http_options(
    *, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The endpoint's settings besides its address (flags > STIGMER_TRIO_* > file), as HttpConfig
    keyword arguments: allow_remote, allow_hosts, max_connections (only those given)."""
    file = file or {}
    options: dict[str, Any] = {}
    for key in ("http_allow_remote", "http_allow_hosts", "http_max_connections"):
        raw = env.get(f"STIGMER_TRIO_{key.upper()}")
        if flags.get(key) is not None:
            value = flags[key]
        elif raw is not None and raw != "":
            value = _env_value(key, raw)
        elif key in file:
            value = file[key]
        else:
            continue
        options[key.removeprefix("http_")] = value
    if "allow_remote" in options and not isinstance(options["allow_remote"], bool):
        raise ConfigError(f"http_allow_remote must be true or false, got {options['allow_remote']!r}")
    return options


@attrs.frozen(kw_only=True)
class OutboxConfig:
    """The durable start queue (``<state_dir>/outbox.db``): how many entries may wait (`max_pending`;
    a submit beyond it raises OutboxFull), how long a started entry is kept (`retain`, seconds: its id
    stays deduplicated that long), and how many starts the drain has in flight (`concurrency`)."""

    max_pending: int = attrs.field(default=100_000, validator=_count(1, 1_000_000_000))
    retain: float = attrs.field(default=7 * 24 * 3600.0, validator=_seconds(maximum=MAX_RETAIN))
    concurrency: int = attrs.field(default=16, validator=_count(1, 1024))


def _log_format(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("text", "json"):
        raise ConfigError(f"{attribute.name} must be 'text' or 'json', got {value!r}")


@attrs.frozen(kw_only=True)
class RuntimeConfig:
    """Everything one runtime needs. `dev_server` None is external mode (connect only)."""

    state_dir: Path = attrs.field(converter=_path)
    dev_server: DevServerConfig | None = attrs.field(factory=DevServerConfig)
    # None: connect to the dev server (its address and first namespace).
    connection: ConnectionConfig | None = None
    workers: tuple[WorkerSpec, ...] = attrs.field(default=(), converter=_specs)
    # Also run the built-in demo worker (task queue "stigmer-trio-demo"); the CLI's daemon does.
    demo_worker: bool = attrs.field(default=False, validator=_bool)
    # The runtime supervisor's intensity. Unlimited by default: every child brings a restart limit of
    # its own (the dev server's gives up after 5 restarts in 60 s). `[restart]` in the TOML file sets it.
    policy: RestartPolicy = attrs.field(default=RestartPolicy(max_restarts=None), validator=_policy)
    shutdown_timeout: float = attrs.field(default=15.0, validator=_seconds())
    # The control endpoint; None (the library default) serves none. The CLI's daemon serves one.
    http: HttpConfig | None = attrs.field(default=None)
    # The daemon's own log (logs/daemon.log when detached): format, size bound and rotated copies.
    log_format: str = attrs.field(default="text", validator=_log_format)
    log_max_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_count(4096, MAX_LOG_BYTES))
    log_backups: int = attrs.field(default=3, validator=_count(0, 1000))
    # The durable start queue (Runtime.submit_workflow); None: no queue, no outbox child.
    outbox: OutboxConfig | None = attrs.field(factory=OutboxConfig)

    @http.validator
    def _check_http(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, HttpConfig):
            raise ConfigError(f"http must be an HttpConfig or None, got {value!r}")

    @outbox.validator
    def _check_outbox(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, OutboxConfig):
            raise ConfigError(f"outbox must be an OutboxConfig or None, got {value!r}")

    def __attrs_post_init__(self) -> None:
        queues = [spec.task_queue for spec in self.workers if isinstance(spec, WorkerSpec)]
        if self.demo_worker:
            queues.append(DEMO_TASK_QUEUE)
        for index, queue in enumerate(queues):
            if queue in queues[:index]:
                raise ConfigError(f"workers: two WorkerSpecs for task queue {queue!r}")

    def effective_connection(self) -> ConnectionConfig:
        """The connection to use: the configured one, else the dev server's address and namespace."""
        if self.connection is not None:
            return self.connection
        if self.dev_server is None:
            raise ConfigError("connection must be set in external mode (dev_server=None)")
        return ConnectionConfig(address=self.dev_server.address, namespace=self.dev_server.namespaces[0])


# --- precedence ----------------------------------------------------------------------------------------
# Keys of the flat settings dict, where each comes from in the environment, and its parser.
_DEV_KEYS = (
    "binary", "port", "http_port", "metrics_port", "namespaces", "persist", "db_filename",
    "start_timeout", "health_interval", "health_timeout", "failures_to_restart", "stop_timeout",
    "log_max_bytes", "log_backups", "dynamic_config", "sqlite_pragmas", "ui", "ui_port",
)  # fmt: skip
_FILE_KEYS = (
    "state_dir", "dev_server", "shutdown_timeout", "restart", "external", "demo_worker", "workers",
    "http", "http_allow_remote", "http_allow_hosts", "http_max_connections", "log_format", "log_max_bytes",
    "log_backups", "outbox", "connection",
)  # fmt: skip
# [outbox] in the file, STIGMER_TRIO_OUTBOX_<KEY> in the environment; `enabled = false`: no queue.
_OUTBOX_KEYS = ("enabled", "max_pending", "retain", "concurrency")
_POLICY_KEYS = tuple(f.name for f in attrs.fields(RestartPolicy))
_INT_KEYS = {
    "port", "http_port", "metrics_port", "ui_port", "failures_to_restart", "log_max_bytes", "log_backups",
    "outbox_max_pending", "outbox_concurrency", "http_max_connections",
}  # fmt: skip
_FLOAT_KEYS = {
    "start_timeout", "health_interval", "health_timeout", "stop_timeout", "shutdown_timeout", "outbox_retain",
}  # fmt: skip


def _env_value(key: str, raw: str) -> Any:
    name = f"STIGMER_TRIO_{key.upper()}"
    try:
        if key in _INT_KEYS:
            return int(raw)
        if key in _FLOAT_KEYS:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if key in ("persist", "ui", "demo_worker", "http_allow_remote", "outbox_enabled"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if key in ("namespaces", "dynamic_config", "sqlite_pragmas", "http_allow_hosts"):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(allowed))})")


# A restart table's upper bounds (RestartPolicy itself, for the library, also takes inf for `window`
# and `reset_after`): a file's delays are at most a day, its window a year.
_POLICY_BOUNDS = {
    "initial_delay": MAX_SECONDS, "backoff": MAX_SECONDS, "max_delay": MAX_SECONDS,
    "reset_after": MAX_SECONDS, "window": MAX_RETAIN, "multiplier": 1000.0, "max_restarts": 1_000_000,
}  # fmt: skip


def _check_policy_bounds(table: Mapping[str, Any], where: str) -> None:
    for key, value in table.items():
        limit = _POLICY_BOUNDS.get(key)
        if limit is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue  # RestartPolicy explains a wrong type
        if not value <= limit:  # NaN too
            raise ConfigError(f"{where} {key} must be at most {limit:.0f}, got {value!r}")


def resolve(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, Any] | None = None,
    load_profile: Callable[[str | None], Mapping[str, Any]] | None = None,
) -> RuntimeConfig:
    """Build the RuntimeConfig from flags > STIGMER_TRIO_* environment > TOML file > defaults.

    `flags` holds only the options the user gave (None values are ignored); `file` is the parsed TOML.
    `load_profile(name)`: in external mode only, the Temporal SDK's environment configuration (the
    TEMPORAL_* variables over a temporal.toml profile), below all of ours: see `_external_connection`.
    """
    file = file or {}
    _check_keys(file, _FILE_KEYS, "config file")
    runtime_policy = _table(file.get("restart", {}), "[restart]")
    _check_keys(runtime_policy, _POLICY_KEYS, "[restart]")
    _check_policy_bounds(runtime_policy, "[restart]")
    file_dev = dict(_table(file.get("dev_server", {}), "[dev_server]"))
    file_policy = _table(file_dev.pop("restart", {}), "[dev_server.restart]")
    file_env = file_dev.pop("env", None)  # [dev_server.env]: the server's extra environment (file only)
    _check_keys(file_dev, _DEV_KEYS, "[dev_server]")
    _check_keys(file_policy, _POLICY_KEYS, "[dev_server.restart]")
    _check_policy_bounds(file_policy, "[dev_server.restart]")

    def pick(key: str, file_table: Mapping[str, Any]) -> Any:
        if flags.get(key) is not None:
            return flags[key]
        raw = env.get(f"STIGMER_TRIO_{key.upper()}")
        if raw is not None and raw != "":
            return _env_value(key, raw)
        return file_table.get(key)

    state_dir = pick("state_dir", file)
    if state_dir is None:
        state_dir = default_state_dir(env)
    elif not isinstance(state_dir, str | Path) or not str(state_dir):
        raise ConfigError(f"state_dir must be a path, got {state_dir!r}")

    dev: dict[str, Any] = {}
    for key in _DEV_KEYS:
        value = pick(key, file_dev)
        if value is not None:
            dev[key] = value
    if file_env is not None:
        dev["env"] = dict(_table(file_env, "[dev_server.env]"))
    if file_policy:
        try:
            dev["policy"] = attrs.evolve(DEFAULT_DEVSERVER_POLICY, **file_policy)
        except ConfigError as exc:
            raise ConfigError(f"[dev_server.restart] {exc}") from None
    shutdown = pick("shutdown_timeout", file)
    dev_server = DevServerConfig(**dev)
    runtime: dict[str, Any] = {"state_dir": state_dir, "dev_server": dev_server}
    external = pick("external", file)
    if external is not None and external is not False:
        runtime["dev_server"] = None
        namespace = dev_server.namespaces[0] if "namespaces" in dev else None
        runtime["connection"] = _external_connection(
            external, namespace, flags=flags, env=env, file=file, load_profile=load_profile
        )
    else:
        _refuse_connection_settings(flags=flags, env=env, file=file)
    demo = pick("demo_worker", file)
    if demo is not None:
        runtime["demo_worker"] = demo
    if flags.get("workers"):
        runtime["workers"] = tuple(flags["workers"])
    if runtime_policy:
        try:
            runtime["policy"] = RestartPolicy(**{"max_restarts": None, **runtime_policy})
        except ConfigError as exc:
            raise ConfigError(f"[restart] {exc}") from None
    if shutdown is not None:
        runtime["shutdown_timeout"] = shutdown
    http = pick("http", file)
    if http is not None:
        runtime["http"] = parse_http(http, **http_options(flags=flags, env=env, file=file))
    for key in ("log_format", "log_max_bytes", "log_backups"):
        value = pick(key, file)
        if value is not None:
            runtime[key] = value
    runtime["outbox"] = resolve_outbox(flags=flags, env=env, file=file)
    return RuntimeConfig(**runtime)


def resolve_outbox(
    *, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any] | None = None
) -> OutboxConfig | None:
    """The queue's settings from flags named outbox_<key> > STIGMER_TRIO_OUTBOX_<KEY> > the file's
    [outbox] table > defaults (the `submit` command's too), or None when `enabled` is false."""
    file_table = _table((file or {}).get("outbox", {}), "[outbox]")
    _check_keys(file_table, _OUTBOX_KEYS, "[outbox]")
    values: dict[str, Any] = {}
    for key in _OUTBOX_KEYS:
        name = f"outbox_{key}"
        raw = env.get(f"STIGMER_TRIO_{name.upper()}")
        if flags.get(name) is not None:
            values[key] = flags[name]
        elif raw is not None and raw != "":
            values[key] = _env_value(name, raw)
        elif key in file_table:
            values[key] = file_table[key]
    enabled = values.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"outbox enabled must be true or false, got {enabled!r}")
    try:
        return OutboxConfig(**values) if enabled else None
    except ConfigError as exc:
        raise ConfigError(f"outbox {exc}") from None


# --- the connection in external mode --------------------------------------------------------------------
# Ours: --<flag> > STIGMER_TRIO_<KEY> > the file's [connection] / [connection.tls] table (the key there).
_CONNECTION_SETTINGS = {
    "profile": ("--profile", None), "api_key_file": ("--api-key-file", "api_key_file"),
    "tls": ("--tls", "enabled"), "tls_ca": ("--tls-ca", "ca"), "tls_cert": ("--tls-cert", "cert"),
    "tls_key": ("--tls-key", "key"), "tls_server_name": ("--tls-server-name", "server_name"),
}  # fmt: skip
_CONNECTION_FILE_KEYS = ("profile", "api_key_file", "tls")
_TLS_FILE_KEYS = ("enabled", "ca", "cert", "key", "server_name")
_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")


def _connection_tables(file: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    table = _table(file.get("connection", {}), "[connection]")
    _check_keys(table, _CONNECTION_FILE_KEYS, "[connection]")
    tls = _table(table.get("tls", {}), "[connection.tls]")
    _check_keys(tls, _TLS_FILE_KEYS, "[connection.tls]")
    return table, tls


def _connection_setting(
    key: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    table: Mapping[str, Any],
    tls: Mapping[str, Any],
) -> Any:
    """One of our connection settings: flag > STIGMER_TRIO_<KEY> > the file; None if not given."""
    flag, file_key = _CONNECTION_SETTINGS[key]
    name = f"STIGMER_TRIO_{key.upper()}"
    raw = env.get(name)
    if flags.get(key) is not None:
        value = flags[key]
    elif raw is not None and raw != "":
        value = raw
        if key == "tls":
            if raw.strip().lower() not in (*_YES, *_NO):
                raise ConfigError(f"{name} must be true or false, got {raw!r}")
            value = raw.strip().lower() in _YES
    else:
        source = table if key in ("profile", "api_key_file") else tls
        value = source.get(file_key or key)
        flag = f"[connection{'' if source is table else '.tls'}] {file_key or key}"
    if value is None:
        return None
    if key == "tls":
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} must be true or false, got {value!r}")
    elif not isinstance(value, str | Path) or not str(value) or "\0" in str(value):
        raise ConfigError(
            f"{flag} must be a non-empty {'name' if key == 'profile' else 'path'}, got {value!r}"
        )
    return value


def _refuse_connection_settings(
    *, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
) -> None:
    """Dev-server mode: the connection is the loopback dev server's; TLS settings there are a mistake."""
    table, tls = _connection_tables(file)
    for key, (flag, _) in _CONNECTION_SETTINGS.items():
        if _connection_setting(key, flags, env, table, tls) is not None:
            raise ConfigError(
                f"{flag} (connection {key}) applies only to an external Temporal: add --external [HOST:PORT] "
                "(the dev server is plaintext on 127.0.0.1)"
            )


def _external_connection(
    external: Any,
    namespace: str | None,
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, Any],
    load_profile: Callable[[str | None], Mapping[str, Any]] | None,
) -> ConnectionConfig:
    """The connection to an external Temporal. Precedence, per setting: our flags > STIGMER_TRIO_* >
    our TOML file > TEMPORAL_* variables > the temporal.toml profile > defaults (the last two through
    `load_profile`, the Temporal SDK's own environment configuration: a mapping with address, namespace,
    api_key and tls {disabled, server_name, ca_file|ca_data, cert_file|cert_data, key_file|key_data}).
    `external`: HOST:PORT, or True (a yes-word) for the address of the profile / TEMPORAL_ADDRESS."""
    table, file_tls = _connection_tables(file)

    def ours(key: str) -> Any:
        return _connection_setting(key, flags, env, table, file_tls)

    if isinstance(external, str) and external.strip().lower() in _YES:
        external = True
    if external is not True:
        try:
            _address(None, attrs.fields(ConnectionConfig).address, external)
        except ConfigError:
            raise ConfigError(f"external must be HOST:PORT, got {external!r}") from None
    temporal = load_profile(ours("profile")) if load_profile is not None else {}
    temporal_tls: Mapping[str, Any] = temporal.get("tls") or {}
    settings: dict[str, Any] = {
        "address": external if external is not True else temporal.get("address") or "127.0.0.1:7233",
        "namespace": namespace or temporal.get("namespace") or "default",
    }
    key_file = ours("api_key_file")
    if key_file is not None:
        settings["api_key_file"] = key_file
    elif temporal.get("api_key"):
        settings["api_key"] = temporal["api_key"]
    material: dict[str, Any] = {}
    if (ca := ours("tls_ca")) is not None:
        material["ca_file"] = ca
    else:
        material.update({k: temporal_tls[k] for k in ("ca_file", "ca_data") if temporal_tls.get(k)})
    cert, key = ours("tls_cert"), ours("tls_key")
    if cert is not None or key is not None:  # a pair: never our certificate with the profile's key
        material.update(cert_file=cert, key_file=key)
    else:
        pair = ("cert_file", "cert_data", "key_file", "key_data")
        material.update({k: temporal_tls[k] for k in pair if temporal_tls.get(k)})
    server_name = ours("tls_server_name") or temporal_tls.get("server_name")
    if server_name is not None:
        material["server_name"] = server_name
    enabled = ours("tls")
    if enabled is False and any(ours(k) is not None for k in ("tls_ca", "tls_cert", "tls_key")):
        raise ConfigError("tls is off (--tls false / enabled = false) but TLS files are given")
    if enabled is None and not material and temporal_tls.get("disabled") is not None:
        enabled = not temporal_tls["disabled"]
    if enabled is not False and material:
        settings["tls"] = TlsConfig(**material)
    elif enabled is not None:
        settings["tls"] = enabled
    return ConnectionConfig(**settings)
