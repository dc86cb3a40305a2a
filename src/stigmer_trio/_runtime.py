# The runtime: the supervision tree (trio-asyncio loop in the root, then the children) and the daemon
# that runs it for the CLI. Owns runtime.lock / runtime.json (one daemon per state dir) and the
# daemon's readiness report. Must never: touch argv or stdout (that is _cli's), or exit the interpreter
# normally after temporalio ran (the caller leaves with os._exit; see `daemon_main`).
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil
import trio
import trio_asyncio

from ._config import RuntimeConfig
from ._devserver import DevServer
from ._errors import RestartLimitExceeded, StigmerError
from ._events import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    Event,
    EventHook,
    ServerExited,
    ServerReady,
)
from ._statefiles import FileLock, PidRecord, ensure_state_dir, remove_pid_file, write_pid_file
from ._supervisor import ChildSpec, Strategy, Supervisor

__all__ = ["daemon_main", "serve_runtime"]

logger = logging.getLogger("stigmer_trio")

RUNTIME_LOCK = "runtime.lock"
RUNTIME_RECORD = "runtime.json"


async def serve_runtime(
    config: RuntimeConfig,
    *,
    on_event: EventHook | None = None,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """The supervision tree, until cancelled; started(supervisor) once every child is running."""
    hook = on_event or (lambda event: None)
    async with trio_asyncio.open_loop():
        children = []
        if config.dev_server is not None:
            devserver = DevServer(config.dev_server, config.state_dir, on_event=hook)
            children.append(
                ChildSpec(
                    "devserver",
                    devserver.run,
                    policy=config.dev_server.policy,
                    shutdown_timeout=2 * config.dev_server.stop_timeout + 1.0,
                )
            )
        supervisor = Supervisor(
            children, strategy=Strategy.REST_FOR_ONE, policy=config.policy, name="runtime", on_event=hook
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.serve)
            task_status.started(supervisor)
        raise AssertionError("unreachable: Supervisor.serve never returns")  # pragma: no cover


class _StatusFile:
    """Keeps runtime.json (the daemon's identity plus what `status` reports) current, atomically."""

    def __init__(self, config: RuntimeConfig, clock: Callable[[], float] = time.time) -> None:
        self.path = config.state_dir / RUNTIME_RECORD
        self.config = config
        self.clock = clock
        me = psutil.Process()
        self.identity = (os.getpid(), me.create_time(), tuple(me.cmdline()))
        self.started_at = clock()
        self.ready = False
        self.dev_server: dict[str, Any] | None = None
        self.restarts = 0
        self.last_error: str | None = None

    def write(self) -> None:
        pid, create_time, cmdline = self.identity
        extra = {
            "state_dir": str(self.config.state_dir),
            "ready": self.ready,
            "address": self.dev_server["address"] if self.dev_server else None,
            "dev_server": self.dev_server,
            "last_error": self.last_error,
        }
        write_pid_file(self.path, PidRecord(pid, create_time, cmdline, self.started_at, extra))

    def on_event(self, event: Event) -> None:
        if isinstance(event, ServerReady):
            self.ready = True
            self.dev_server = {
                "pid": event.pid,
                "address": event.address,
                "adopted": event.adopted,
                "restarts": self.restarts,
                "started_at": self.clock(),
            }
        elif isinstance(event, ServerExited):
            self.ready = False
            self.last_error = f"dev server {event.reason}"
            if self.dev_server is not None:
                self.dev_server = {**self.dev_server, "pid": None}
        elif isinstance(event, ChildRestartScheduled) and event.name == "devserver":
            self.restarts += 1
            if self.dev_server is not None:
                self.dev_server = {**self.dev_server, "restarts": self.restarts}
        else:
            return
        self.write()


def _log_event(event: Event) -> None:
    if isinstance(event, ServerReady):
        how = "adopted" if event.adopted else "started"
        logger.info(
            "dev server %s at %s (pid %d), ready after %.3f s",
            how,
            event.address,
            event.pid,
            event.ready_after,
        )
    elif isinstance(event, ServerExited):
        logger.warning("dev server pid %d at %s: %s", event.pid, event.address, event.reason)
    elif isinstance(event, ChildExited) and event.error is not None and not event.stopped:
        logger.warning("child %s failed after %.3f s: %s", event.name, event.ran_for, event.error)
    elif isinstance(event, ChildRestartScheduled):
        logger.info("restarting %s in %.3f s (attempt %d)", event.name, event.delay, event.attempt)
    elif isinstance(event, ChildAbandoned):
        logger.error("child %s ignored cancellation for %g s: abandoned", event.name, event.shutdown_timeout)
    elif isinstance(event, RestartLimitExceeded):
        logger.error("%s", event)
    elif isinstance(event, ChildStarted | ChildExited):
        logger.debug("%r", event)


Notify = Callable[[dict[str, Any]], None]


def _first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _daemon(config: RuntimeConfig, status: _StatusFile, notify: Notify) -> int:
    began = trio.current_time()
    failure: BaseException | None = None

    def hook(event: Event) -> None:
        _log_event(event)
        status.on_event(event)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logger.info("received %s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel(reason=f"signal {signum}")
                    return

            async def run_tree() -> None:
                nonlocal failure
                try:
                    async with trio.open_nursery() as tree:
                        await tree.start(functools.partial(serve_runtime, config, on_event=hook))
                        elapsed = trio.current_time() - began
                        logger.info("ready after %.3f s", elapsed)
                        notify(
                            {
                                "event": "ready",
                                "pid": os.getpid(),
                                "address": status.dev_server["address"] if status.dev_server else None,
                                "elapsed": elapsed,
                            }
                        )
                except* StigmerError as group:
                    failure = _first_leaf(group)
                nursery.cancel_scope.cancel(reason="supervision tree ended")

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(run_tree)
    if failure is not None:
        status.last_error = str(failure)
        if not isinstance(failure, RestartLimitExceeded):  # that one was logged as an event already
            logger.error("%s", failure)
        notify({"event": "error", "message": str(failure)})
        return 1
    return 0


def daemon_main(config: RuntimeConfig, notify: Notify) -> int:
    """Run the daemon in this process until stopped; returns the exit code.

    One daemon per state dir (runtime.lock). `notify` receives one dict: ready / error / already-running.
    The caller must leave with os._exit(code): temporalio can crash the interpreter at exit.
    """
    ensure_state_dir(config.state_dir)
    lock = FileLock(config.state_dir / RUNTIME_LOCK)
    if not lock.acquire():
        lock.release()
        notify({"event": "already-running"})
        return 0
    status = _StatusFile(config)
    try:
        status.write()
        return trio.run(_daemon, config, status, notify)
    except KeyboardInterrupt:
        return 130
    finally:
        remove_pid_file(status.path)
        lock.release()


def configure_logging(stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("stigmer_trio")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def write_notification(fd: int) -> Notify:
    """A Notify that writes one JSON line to `fd` (the `up --detach` parent reads it), then closes it."""
    sent = False

    def notify(message: dict[str, Any]) -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(fd)

    return notify
