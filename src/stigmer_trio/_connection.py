# The connection child: keeps a Temporal client connected and says, without waiting, whether it is.
# Owns the ConnectionCell (state + current client + epoch, read synchronously by everyone) and the
# health loop. It calls started() at once — the runtime must start before Temporal does — and then
# reconnects with backoff forever (ConnectionConfig.policy), which is its whole job: an unexpected bug
# still raises and is restarted by the Supervisor. Fast paths: ServerExited drops to DISCONNECTED at
# once; ServerReady and a request's UNAVAILABLE skip the backoff sleep / the probe interval.
# With a supervised dev server (`follow_server`) it never attaches to a server that is not the current
# ready one: ServerExited (said when a server is condemned, before it is stopped) cancels every attempt
# and probe in flight, and the next attempt waits for the next ServerReady. Without that, a hung server
# that is SIGCONTed for its stop answers for a second and becomes a short-lived new epoch.
from __future__ import annotations

import contextlib
import enum
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from ._config import ConnectionConfig
from ._errors import TemporalUnavailable
from ._events import ConnectionStateChanged, Event, HealthChecked, ServerExited, ServerReady
from ._hub import EventHub

if TYPE_CHECKING:
    from temporalio.client import Client

__all__ = ["ConnectionCell", "ConnectionState", "serve_connection"]

_TCP_POLL = 0.02  # seconds between TCP probes while the server refuses connections
_TCP_PROBE_TIMEOUT = 0.5


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class ConnectionCell:
    """The current connection: readers read it without awaiting; only the connection child writes it."""

    def __init__(self, emit: Callable[[Event], None] | None = None, *, follow_server: bool = False) -> None:
        self.state = ConnectionState.CONNECTING
        self.epoch = 0  # +1 on every successful (re)connection
        self.reconnects = 0
        self.last_error: str | None = None
        self._client: Client | None = None
        self._emit = emit or (lambda event: None)
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._flags: set[str] = set()
        # The supervised dev server, as its events tell it (follow_server: connect only to a ready one).
        self.follow_server = follow_server
        self.server_up = False
        self.server_generation = 0  # +1 on every ServerReady
        self._server_changed = trio.Event()
        self._server_scopes: set[trio.CancelScope] = set()

    # --- readers -------------------------------------------------------------------------------------
    def client(self) -> Client:
        """The connected client, or TemporalUnavailable at once (no network I/O) when not CONNECTED."""
        client = self._client
        if self.state is not ConnectionState.CONNECTED or client is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise TemporalUnavailable(f"Temporal is {self.state.value}{why}")
        return client

    async def wait_until(self, predicate: Callable[[ConnectionCell], bool]) -> None:
        while not predicate(self):
            await self._changed.wait()

    async def wait_connected(self) -> tuple[Client, int]:
        """Wait until CONNECTED; the client and its epoch."""
        await self.wait_until(lambda cell: cell.state in (ConnectionState.CONNECTED, ConnectionState.CLOSED))
        if self.state is ConnectionState.CLOSED:
            raise TemporalUnavailable("the runtime is closing")
        return self.client(), self.epoch

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "epoch": self.epoch,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    # --- signals to the connection child -------------------------------------------------------------
    def poke(self, flag: str) -> None:
        """Wake the connection child: 'probe' (a request met UNAVAILABLE), 'exited', 'ready'."""
        self._flags.add(flag)
        self._wake.set()

    async def wait_poke(self, seconds: float, *wanted: str) -> str | None:
        """Wait up to `seconds` for one of the `wanted` pokes; which one (consumed), or None on timeout."""
        with trio.move_on_after(seconds):
            while True:
                for flag in wanted:
                    if flag in self._flags:
                        self._flags.discard(flag)
                        return flag
                self._wake = trio.Event()
                await self._wake.wait()
        return None

    def report(self, event: Event) -> None:
        """Hand an event record to the hub (the connection child's probes report through here)."""
        self._emit(event)

    def forget(self, *flags: str) -> None:
        self._flags.difference_update(flags)

    def on_event(self, event: Event) -> None:
        """Hub hook: the dev server's exits and readiness drive the fast paths."""
        if isinstance(event, ServerExited):
            self.server_up = False
            for scope in list(self._server_scopes):
                scope.cancel(reason="the dev server was condemned")
            self.poke("exited")
        elif isinstance(event, ServerReady):
            self.server_up = True
            self.server_generation += 1
            self.poke("ready")
        else:
            return
        changed, self._server_changed = self._server_changed, trio.Event()
        changed.set()

    async def wait_server_up(self) -> None:
        """Until the supervised dev server is ready (at once when not following one)."""
        while self.follow_server and not self.server_up:
            await self._server_changed.wait()

    @contextlib.contextmanager
    def server_scope(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that the current server's condemnation cancels (when following a server)."""
        scope = trio.CancelScope()
        if self.follow_server:
            if not self.server_up:
                scope.cancel(reason="no ready dev server")
            self._server_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._server_scopes.discard(scope)

    # --- the writer ----------------------------------------------------------------------------------
    def transition(self, new: ConnectionState, reason: str, client: Client | None = None) -> None:
        old = self.state
        if new is ConnectionState.CONNECTED:
            self.epoch += 1
            if self.epoch > 1:
                self.reconnects += 1
            self.last_error = None
        elif new is ConnectionState.DISCONNECTED:
            self.last_error = reason
        self._client = client if new is ConnectionState.CONNECTED else None
        self.state = new
        if old is not new or new is ConnectionState.CONNECTED:
            changed, self._changed = self._changed, trio.Event()
            changed.set()
            self._emit(ConnectionStateChanged(old.value, new.value, reason, self.epoch))


async def serve_connection(
    config: ConnectionConfig,
    cell: ConnectionCell,
    hub: EventHub,
    *,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[ConnectionCell] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, watch, reconnect, forever. started() at once: nobody waits for Temporal to start."""
    from . import _temporal

    rng = rng or random.Random()
    hub.add_hook(cell.on_event)
    task_status.started(cell)
    attempt = 0
    try:
        while True:
            cell.forget("exited", "probe")  # stale; a "ready" that came during a failed attempt counts
            await cell.wait_server_up()  # a supervised dev server: only the current ready one
            generation = cell.server_generation
            cell.transition(ConnectionState.CONNECTING, f"attempt {attempt + 1}")
            began = trio.current_time()
            client = None
            try:
                with cell.server_scope(), trio.fail_after(config.connect_timeout):
                    client = await _temporal.connect(
                        config.address,
                        config.namespace,
                        timeout=config.connect_timeout,
                        tls=config.tls,
                        api_key=config.api_key,
                    )
                    await _temporal.describe_namespace(
                        client, config.namespace, timeout=config.health_timeout
                    )
            except (TemporalUnavailable, trio.TooSlowError) as exc:
                cell.transition(ConnectionState.DISCONNECTED, str(exc) or "connect timed out")
                if trio.current_time() - began >= config.connect_timeout:
                    # It ran out of time (a blackholed network, a hung server): that wait was the backoff.
                    # Retry at once, at the same attempt: while the port accepts TCP, only a new attempt
                    # can notice the network is back, and it must not then sit out an escalated delay.
                    continue
                attempt += 1
                if await _back_off(config, cell, config.policy.delay(attempt, rng)):
                    attempt = 0  # the server is back: should it still be booting, retry from 50 ms
                continue
            if client is None or not _current(cell, generation):
                # The server was condemned during the attempt: the next one waits for its successor.
                cell.transition(ConnectionState.DISCONNECTED, "the dev server was replaced")
                continue
            attempt = 0
            cell.forget("ready", "exited", "probe")
            cell.transition(ConnectionState.CONNECTED, "connected", client)
            reason = await _watch(config, cell, client)
            cell.transition(ConnectionState.DISCONNECTED, reason)
            if not _current(cell, generation):
                continue  # no backoff: the next attempt waits for the next ServerReady
            attempt = 1  # the first reconnect waits initial_delay, unless the server is back sooner
            await _back_off(config, cell, config.policy.delay(attempt, rng))
    finally:
        cell.transition(ConnectionState.CLOSED, "runtime stopping")


def _current(cell: ConnectionCell, generation: int) -> bool:
    """Is the server we connected to still the current ready one? (Always, when not following one.)"""
    return not cell.follow_server or (cell.server_up and cell.server_generation == generation)


async def _tcp_accepts(address: str) -> bool:
    """Does anything accept TCP at `address` right now? (Microseconds against a closed local port.)"""
    host, _, port = address.rpartition(":")
    with trio.move_on_after(_TCP_PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def _back_off(config: ConnectionConfig, cell: ConnectionCell, delay: float) -> bool:
    """Wait `delay` before the next connect attempt, but go at once when the server is back.

    While the port refuses TCP, a cheap TCP probe every 20 ms (and a dev server's ServerReady) ends the
    wait as soon as the server listens again: a full Client.connect is only worth its cost then. If the
    port already accepts (the server is up but the connect failed), the full backoff applies.
    Returns True when it ended early because the server came back.
    """
    deadline = trio.current_time() + delay
    if await _tcp_accepts(config.address):
        return await cell.wait_poke(delay, "ready") is not None
    while (remaining := deadline - trio.current_time()) > 0:
        if await cell.wait_poke(min(_TCP_POLL, remaining), "ready") or await _tcp_accepts(config.address):
            return True
    return False


async def _watch(config: ConnectionConfig, cell: ConnectionCell, client: Client) -> str:
    """Probe every health_interval (or at once when poked); return why the connection is down."""
    from . import _temporal

    while True:
        if await cell.wait_poke(config.health_interval, "exited", "probe") == "exited":
            return "the dev server exited"
        began = trio.current_time()
        try:
            with cell.server_scope() as scope:
                await _temporal.check_health(client, timeout=config.health_timeout)
            if scope.cancelled_caught:
                return "the dev server exited"
        except Exception as exc:  # any failed probe means "not healthy", never a crash of this child
            why = str(exc) if isinstance(exc, TemporalUnavailable) else f"{type(exc).__name__}: {exc}"
            cell.report(HealthChecked(config.address, False, trio.current_time() - began, why))
            return why if isinstance(exc, TemporalUnavailable) else f"health check failed: {why}"
        cell.report(HealthChecked(config.address, True, trio.current_time() - began))
