# The connection cell: the current Temporal connection (state, client, epoch) as one trio-native value
# that every reader reads without awaiting, and the wake-ups ("pokes") other parts send the connection
# child. Shared by the connection child (its only writer), the worker children, the status board and
# the runtime facade; created by _build and passed in, so no child imports another to reach it.
# Rule: never blocks a reader, never does I/O.
from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from .._core._errors import TemporalUnavailable
from .._core._events import (
    ConnectionState,
    ConnectionStateChanged,
    Event,
    ServerExited,
    ServerListening,
    ServerReady,
)

if TYPE_CHECKING:
    from .._boundary._temporal import Client

__all__ = ["ConnectionCell", "Poke"]


class Poke(enum.StrEnum):
    """Why the connection child is woken before its next probe or backoff ends."""

    PROBE = "probe"  # a request met UNAVAILABLE: probe now
    SERVER_EXITED = "exited"  # the supervised dev server was condemned: drop the connection now
    SERVER_READY = "ready"  # a (new) dev server is ready: connect now, no backoff


class ConnectionCell:
    """The current connection: readers read it without awaiting; only the connection child writes it."""

    def __init__(
        self,
        emit: Callable[[Event], None] | None = None,
        *,
        follow_server: bool = False,
        registered: frozenset[str] = frozenset(),
    ) -> None:
        self.state = ConnectionState.CONNECTING
        self.epoch = 0  # +1 on every successful (re)connection
        self.reconnects = 0
        self.last_error: str | None = None
        self._client: Client | None = None
        self._emit = emit or (lambda event: None)
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._flags: set[Poke] = set()
        # The supervised dev server, as its events tell it (follow_server: connect only to a ready one).
        self.follow_server = follow_server
        self.registered = registered  # the namespaces it registers before it serves (no need to describe)
        self.server_up = False
        self.server_generation = 0  # +1 on every ServerReady
        self.server_pid: int | None = None  # the current ready one's, which must own the port we reach
        self.booting_pid: int | None = None  # a spawned one's, until it is ready or condemned
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
    def poke(self, flag: Poke) -> None:
        """Wake the connection child (see Poke)."""
        self._flags.add(flag)
        self._wake.set()

    async def wait_poke(self, seconds: float, *wanted: Poke) -> Poke | None:
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

    def forget(self, *flags: Poke) -> None:
        self._flags.difference_update(flags)

    def on_event(self, event: Event) -> None:
        """Hub hook: the dev server's exits and readiness drive the fast paths."""
        if isinstance(event, ServerExited):
            self.server_up = False
            self.booting_pid = None
            for scope in list(self._server_scopes):
                scope.cancel(reason="the dev server was condemned")
            self.poke(Poke.SERVER_EXITED)
        elif isinstance(event, ServerListening):
            self.booting_pid = event.pid
        elif isinstance(event, ServerReady):
            self.server_up = True
            self.booting_pid = None
            self.server_generation += 1
            self.server_pid = event.pid
            self.poke(Poke.SERVER_READY)
        else:
            return
        changed, self._server_changed = self._server_changed, trio.Event()
        changed.set()

    async def wait_server_up(self) -> None:
        """Until the supervised dev server is ready (at once when not following one)."""
        while self.follow_server and not self.server_up:
            await self._server_changed.wait()

    async def wait_server_known(self) -> None:
        """Until the supervised dev server is ready or booting (at once when not following one)."""
        while self.follow_server and not self.server_up and self.booting_pid is None:
            await self._server_changed.wait()

    @contextlib.contextmanager
    def server_scope(self, *, booting: bool = False) -> Iterator[trio.CancelScope]:
        """A cancel scope that the current server's condemnation cancels (when following a server);
        cancelled at once when there is no ready server (`booting`: nor a booting one)."""
        scope = trio.CancelScope()
        if self.follow_server:
            if not self.server_up and not (booting and self.booting_pid is not None):
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
            self._emit(ConnectionStateChanged(old, new, reason, self.epoch))
