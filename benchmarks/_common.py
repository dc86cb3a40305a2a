"""The benchmarks' one harness: what every script in benchmarks/ shares. No trio at import time.

* `start_dev_command`: THE `temporal server start-dev` command line of the benchmarks (127.0.0.1 only,
  headless, JSON logs); `Server` runs it under trio, `runtime_settings()` gives the runtime's own
  dev-server settings (from the public `DevServerConfig` defaults) for a "tuned" bare server;
* `pct`: THE percentile of every table (nearest rank, see its docstring), so every p-column and every
  ratio of p-values in benchmarks/ means the same thing;
* `free_port`, `Table` (the Markdown table), `ratio_row` (a figure as a ratio to a floor or peer of the
  same run), `require` (a smoke run with no samples is a failure), `run_timed` / `leave` (stdout kept for
  the tables, exit without interpreter teardown), `probe_ready` (our own readiness probe).

The plain-SDK child process of the peer comparisons lives in `_sdk_child.py`.

Every process started here is recorded in `STARTED` and killed by `kill_leftovers()` (its own pids and
process groups only). Clocks: `time.monotonic()` (CLOCK_MONOTONIC, system-wide on Linux) for instants
compared across processes, `time.perf_counter_ns()` for durations.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from stigmer_trio._boundary._launch import free_port as launch_free_port

if TYPE_CHECKING:
    import trio

HERE = Path(__file__).resolve().parent
TEMPORAL = Path(sys.executable).parent / "temporal"
EAGER_START = "system.enableEagerWorkflowStart=true"

# pid -> True for a process-group leader we started (killed with killpg), False for a plain child.
STARTED: dict[int, bool] = {}


# --- small pure helpers ----------------------------------------------------------------------------------
def run_root(root: Path | None, prefix: str) -> Path:
    """The run's directory: `root` (`--root`; must not exist yet, made 0700) or a fresh mkdtemp."""
    if root is not None:
        root.mkdir(mode=0o700)
        return root
    return Path(tempfile.mkdtemp(prefix=prefix))


def free_port() -> int:
    """A free port on 127.0.0.1 whose port + 1000 is free too: a dev server spawned by the runtime serves
    its Web UI there by default."""
    return launch_free_port(ui=True)


def pct(values: Sequence[float], q: float) -> float:
    """THE percentile of the benchmarks: nearest rank, the smallest sample with at least q of all samples
    at or below it (q in [0, 1]); nan when empty. Always a measured value, never an interpolation: p50
    of an even count is the lower middle sample, p100 the max; p99 of 200 samples is the 2nd largest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def ratio(value: float, floor: float) -> float:
    """`value` / `floor`, nan when either is missing or the floor is 0."""
    if math.isnan(value) or math.isnan(floor) or floor == 0:
        return math.nan
    return value / floor


def require(samples: Mapping[str, Sequence[float]], *names: str) -> None:
    """Fail (RuntimeError) when a series the benchmark exists to measure got no samples: a run that
    measured nothing is broken, even if nothing raised."""
    empty = [name for name in names if not samples.get(name)]
    if empty:
        raise RuntimeError(f"no samples for: {', '.join(empty)}")


def command_line() -> str:
    """The exact command that ran this script, relative to the repository when possible."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        exe = os.path.relpath(exe)
    return " ".join(shlex.quote(part) for part in [exe, *sys.argv])


def machine_note(load_before: tuple[float, float, float]) -> str:
    return (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; load average (1 min) "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine shows here)."
    )


class Table:
    """A Markdown table: measurement | n | p50 | p90 | p99 | max | target | met."""

    def __init__(self, unit: str, fmt: str = "{:.1f}") -> None:
        self.unit = unit
        self.fmt = fmt
        self.lines = [
            f"| measurement ({unit}) | n | p50 | p90 | p99 | max | target | met |",
            "|---|---|---|---|---|---|---|---|",
        ]

    def row(
        self, name: str, values: Sequence[float], target: str = "", met: bool | None = None, *, note: str = ""
    ) -> None:
        if not values:
            self.lines.append(f"| {name} | 0 | | | | | {target} | {note or 'no samples'} |")
            return
        cells = [self.fmt.format(pct(values, q)) for q in (0.5, 0.9, 0.99, 1.0)]
        verdict = "" if met is None else ("yes" if met else "**NO**")
        self.lines.append(f"| {name} | {len(values)} | {' | '.join(cells)} | {target} | {verdict} |")

    def ratios(
        self,
        name: str,
        values: Sequence[float],
        floor: Sequence[float],
        target: str = "",
        met: bool | None = None,
    ) -> None:
        """One row of ratios, each column's percentile of `values` over the same percentile of `floor`
        (a floor or a peer measured in the same run); n = "n / n of the floor"."""
        cells = []
        for q in (0.5, 0.9, 0.99, 1.0):
            value = ratio(pct(values, q), pct(floor, q))
            cells.append("" if math.isnan(value) else f"{value:.2f}x")
        verdict = "" if met is None else ("yes" if met else "**NO**")
        self.lines.append(
            f"| {name} | {len(values)} / {len(floor)} | {' | '.join(cells)} | {target} | {verdict} |"
        )

    def text(self, name: str, cells: Iterable[str], target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("yes" if met else "**NO**")
        cells = list(cells) + [""] * 6
        self.lines.append(f"| {name} | {' | '.join(cells[:5])} | {target} | {verdict} |")

    def render(self) -> str:
        return "\n".join(self.lines)


# --- process bookkeeping ---------------------------------------------------------------------------------
def forget(pid: int) -> None:
    STARTED.pop(pid, None)


def kill_leftovers() -> list[int]:
    """SIGKILL every process this run started and has not reaped yet, then reap it; the pids killed."""
    killed = []
    for pid, group in list(STARTED.items()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        forget(pid)
    return killed


def run_timed(run: Callable[[], object]) -> tuple[int, float, tuple[float, float, float]]:
    """Protect stdout, then run: (exit code, wall seconds, load average before). A crash is printed."""
    protect_stdout()
    load_before = os.getloadavg()
    began = time.monotonic()
    code = 0
    try:
        run()
    except BaseException:
        traceback.print_exc()
        code = 1
    return code, time.monotonic() - began, load_before


def protect_stdout() -> None:
    """Keep stdout for our tables: the SDK's core (Rust) logs to fd 1, so fd 1 now goes to stderr."""
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = os.fdopen(saved, "w", buffering=1)


def leave(code: int) -> None:
    """Flush and leave without running interpreter teardown (temporalio can crash it after a Worker ran)."""
    kill_leftovers()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


# --- parent side (trio) ----------------------------------------------------------------------------------
def start_dev_command(
    *,
    port: int,
    http_port: int,
    metrics_port: int,
    db: Path | None,
    dynamic_config: Iterable[str] = (),
    sqlite_pragmas: Iterable[str] = (),
    namespaces: Iterable[str] = ("default",),
    extra: Iterable[str] = (),
    binary: Path = TEMPORAL,
) -> list[str]:
    """THE `temporal server start-dev` command line of the benchmarks: bound to 127.0.0.1, headless, JSON
    logs, every port given (pass free ones), the db at `db` (None: in memory, and no SQLite pragmas)."""
    command = [
        str(binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
        "--port", str(port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--log-format", "json",
    ]  # fmt: skip
    for setting in dynamic_config:
        command += ["--dynamic-config-value", setting]
    if db is not None:
        command += ["--db-filename", str(db)]
        for pragma in sqlite_pragmas:
            command += ["--sqlite-pragma", pragma]
    for namespace in namespaces:
        command += ["--namespace", namespace]
    return command + list(extra)


def runtime_settings() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The runtime's own dev-server settings (dynamic config, SQLite pragmas): the public
    `DevServerConfig` defaults, so a bare server started with them is the one the runtime would run."""
    import stigmer_trio as st

    defaults = st.DevServerConfig()
    return tuple(defaults.dynamic_config), tuple(defaults.sqlite_pragmas)


def server_env(home: Path) -> dict[str, str]:
    """The environment of a bare server: HOME in our temp dir (the CLI keeps files there), no version
    check over the network."""
    return {**os.environ, "HOME": str(home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}


def popen_server(command: Sequence[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start a bare server without trio (its own session, output appended to `log`), recorded in STARTED;
    end it with `kill_popen`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=server_env(home),
            start_new_session=True,
        )
    STARTED[proc.pid] = True
    return proc


def kill_popen(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of a `popen_server` process and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    forget(proc.pid)


class Server:
    """The bare `temporal server start-dev` under trio, on fixed 127.0.0.1 ports, persisted db, HOME in
    `root`. `tuned`: the runtime's own settings (`runtime_settings()`); else eager start only (`eager`)
    or the stock server (what a user of the SDK runs)."""

    def __init__(self, root: Path, *, eager: bool = True, tuned: bool = False) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = root / "temporal.db"
        self.log = root / "server.log"
        self.port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.eager = eager
        self.tuned = tuned
        self.proc: trio.Process | None = None
        self.spawns = 0

    def command(self) -> list[str]:
        dynamic_config: tuple[str, ...] = (EAGER_START,) if self.eager else ()
        sqlite_pragmas: tuple[str, ...] = ()
        if self.tuned:
            dynamic_config, sqlite_pragmas = runtime_settings()
        return start_dev_command(
            port=self.port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
            db=self.db,
            dynamic_config=dynamic_config,
            sqlite_pragmas=sqlite_pragmas,
        )

    async def spawn(self) -> float:
        """Start it; time.monotonic() just before the spawn."""
        import trio

        assert self.proc is None, "already running"
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            began = time.monotonic()
            self.proc = await trio.lowlevel.open_process(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=server_env(self.home),
                start_new_session=True,
            )
        finally:
            os.close(fd)
        STARTED[self.proc.pid] = True
        self.spawns += 1
        return began

    async def kill(self) -> float:
        """SIGKILL its process group and reap it; time.monotonic() just before the signal."""
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        forget(proc.pid)
        return began


async def tcp_accepts(port: int) -> bool:
    import trio

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


async def probe_ready(port: int, *, interval: float = 0.002, limit: float = 60.0) -> tuple[float, int]:
    """Our own readiness probe, from trio: TCP accept, then a fresh Client.connect + check_health (through
    trio-asyncio, which must be open), retried every `interval`. (time.monotonic() when it passed, tries)."""
    import trio
    import trio_asyncio
    from temporalio.client import Client

    address = f"127.0.0.1:{port}"
    tries = 0
    with trio.fail_after(limit):
        while True:
            tries += 1
            if await tcp_accepts(port):
                try:
                    with trio.fail_after(1.0):
                        client = await trio_asyncio.aio_as_trio(Client.connect)(address)
                        healthy = await trio_asyncio.aio_as_trio(client.service_client.check_health)(
                            timeout=timedelta(seconds=1)
                        )
                    if healthy:
                        return time.monotonic(), tries
                except (Exception, trio.TooSlowError):
                    pass
            await trio.sleep(interval)
