# The connection child: keeps a Temporal client connected and says, without waiting, whether it is. The only
# writer of the ConnectionCell (_cell: state + current client + epoch, read synchronously by everyone) and
# owner of the health loop. It calls started() at once — the runtime must start before Temporal does — and
# then reconnects with backoff forever (ConnectionConfig.policy), which is its whole job: an unexpected bug
# still raises and is restarted by the Supervisor. Fast paths: ServerExited drops to DISCONNECTED at once;
# ServerReady and a request's UNAVAILABLE skip the backoff sleep / the probe interval. With a supervised dev
# server (`follow_server`) it never attaches to a server that is not the current ready one: ServerExited (said
# when a server is condemned, before it is stopped) cancels every attempt and probe in flight, and the next
# attempt waits for the next ServerReady. Without that, a hung server that is SIGCONTed for its stop answers
# for a second and becomes a short-lived new epoch. Loopback is not a trust boundary: in that mode a
# connection counts only once the socket listening on the address is the ready server's own (its pid,
# from ServerReady): another local process that bound the port (say, in a restart gap) is never CONNECTED.
# That check reads /proc (~0.1-3 ms, with the number of sockets on the host): once per connect, in a thread.
# TLS files and an API-key file are read again at every connect (in a thread): a rotation is picked up at
# the next reconnect; a file that became unreadable or unsafe fails that attempt (DISCONNECTED, its reason).
from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._boundary._holdings import listens_on
from .._boundary._tls import TlsMaterial, connect_material, reads_files
from .._core._config import ConnectionConfig
from .._core._errors import ConfigError, TemporalUnavailable
from .._core._events import ConnectionState, HealthChecked
from ._cell import ConnectionCell, Poke
from ._hub import EventHub

if TYPE_CHECKING:
    from .._boundary._bridge import Bridge
    from .._boundary._temporal import Client

__all__ = ["serve_connection"]

_TCP_POLL = 0.02  # seconds between TCP probes while the server refuses connections
_BOOT_POLL = 0.002  # seconds between attempts on a booting dev server that already listens


async def serve_connection(
    config: ConnectionConfig,
    cell: ConnectionCell,
    hub: EventHub,
    *,
    bridge: Bridge | None = None,
    rng: random.Random | None = None,
    owner_check: Callable[[int, int], bool] | None = None,
    task_status: trio.TaskStatus[ConnectionCell] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, watch, reconnect, forever. started() at once: nobody waits for Temporal to start.
    `bridge`: Temporal (default: the real one, imported now: not at import, the dev server boots
    meanwhile). `owner_check(pid, port)`: does the followed server's pid own the listener on the port?
    (default: the kernel's answer with the real Temporal, none with a fake bridge: it has no socket).
    An attempt on a namespace the followed dev server registers before it serves (cell.registered)
    checks health instead of describing it: 10-20 ms less right after a boot."""
    from .._boundary._bridge import temporal_bridge

    temporal = bridge or temporal_bridge()
    if owner_check is None and bridge is None:
        owner_check = listens_on
    rng = rng or random.Random()
    hub.add_hook(cell.on_event)
    task_status.started(cell)
    attempt = 0
    try:
        while True:
            # Stale wake-ups are dropped; a SERVER_READY that came during a failed attempt counts.
            cell.forget(Poke.SERVER_EXITED, Poke.PROBE)
            await cell.wait_server_known()  # a supervised dev server: the current ready or booting one
            cell.transition(ConnectionState.CONNECTING, f"attempt {attempt + 1}")
            early = None
            if cell.follow_server and not cell.server_up:
                early = await _while_booting(temporal, config, cell, owner_check)
                if early is None and not cell.server_up:
                    continue  # condemned while it booted: wait for its successor
            generation = cell.server_generation
            began = trio.current_time()
            client = None
            impostor: str | None = None  # an early client's listener was checked while it booted
            try:
                if early is not None:
                    client = early
                else:
                    client, impostor = await _checked_attempt(
                        temporal, config, cell, cell.server_pid, owner_check
                    )
            except (TemporalUnavailable, trio.TooSlowError, ConfigError) as exc:
                cell.transition(ConnectionState.DISCONNECTED, str(exc) or "connect timed out")
                if trio.current_time() - began >= config.connect_timeout:
                    # It ran out of time (a blackholed network, a hung server): that wait was the backoff.
                    # Retry at once, at the same attempt: while the port accepts TCP, only a new attempt
                    # can notice the network is back, and it must not then sit out an escalated delay.
                    continue
                attempt += 1
                if await _back_off(temporal, config, cell, config.policy.delay(attempt, rng)):
                    attempt = 0  # the server is back: should it still be booting, retry from 50 ms
                continue
            if client is None or not _current(cell, generation):
                # The server was condemned during the attempt: the next one waits for its successor.
                cell.transition(ConnectionState.DISCONNECTED, "the dev server was replaced")
                continue
            if impostor is not None:
                cell.transition(ConnectionState.DISCONNECTED, impostor)
                attempt += 1
                await cell.wait_poke(config.policy.delay(attempt, rng), Poke.SERVER_READY)
                continue
            attempt = 0
            cell.forget(Poke.SERVER_READY, Poke.SERVER_EXITED, Poke.PROBE)
            cell.transition(ConnectionState.CONNECTED, "connected", client)
            reason = await _watch(temporal, config, cell, client)
            cell.transition(ConnectionState.DISCONNECTED, reason)
            if not _current(cell, generation):
                continue  # no backoff: the next attempt waits for the next ServerReady
            attempt = 1  # the first reconnect waits initial_delay, unless the server is back sooner
            await _back_off(temporal, config, cell, config.policy.delay(attempt, rng))
    finally:
        cell.transition(ConnectionState.CLOSED, "runtime stopping")


async def _attempt(
    temporal: Bridge,
    config: ConnectionConfig,
    cell: ConnectionCell,
    *,
    booting: bool = False,
) -> Client | None:
    """One connect + DescribeNamespace (a health check for a namespace the followed dev server registers
    before it serves), within connect_timeout; None when the followed server was condemned meanwhile
    (the attempt is cancelled)."""
    client = None
    with cell.server_scope(booting=booting), trio.fail_after(config.connect_timeout):
        tls, api_key = await _connect_material(config)
        client = await temporal.connect(
            config.address, config.namespace, timeout=config.connect_timeout, tls=tls, api_key=api_key
        )
        if cell.follow_server and config.namespace in cell.registered:
            await temporal.check_health(client, timeout=config.health_timeout)
        else:
            await temporal.describe_namespace(client, config.namespace, timeout=config.health_timeout)
        return client
    return None


async def _checked_attempt(
    temporal: Bridge,
    config: ConnectionConfig,
    cell: ConnectionCell,
    pid: int | None,
    owner_check: Callable[[int, int], bool] | None,
    *,
    booting: bool = False,
) -> tuple[Client | None, str | None]:
    """An attempt (see _attempt) and, beside it rather than after it, the kernel's answer on who owns the
    listener (_impostor, in a thread): the client (None: condemned meanwhile) and why what answers is
    not the followed server (None: it is). Raises what the attempt raises."""
    impostor: str | None = None
    failure: TemporalUnavailable | trio.TooSlowError | ConfigError | None = None
    client = None

    async def owner() -> None:
        nonlocal impostor
        impostor = await _impostor(config, pid, cell, owner_check)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        try:
            client = await _attempt(temporal, config, cell, booting=booting)
        except (TemporalUnavailable, trio.TooSlowError, ConfigError) as exc:
            failure = exc
            nursery.cancel_scope.cancel(reason="the attempt failed")
    if failure is not None:
        raise failure
    return client, impostor


async def _while_booting(
    temporal: Bridge,
    config: ConnectionConfig,
    cell: ConnectionCell,
    owner_check: Callable[[int, int], bool] | None,
) -> Client | None:
    """Connect to the followed dev server while it boots (ServerListening: its port accepts TCP), beside
    the dev-server child's own readiness checks instead of after them: connect + the namespace check
    and the listener's owner, retried every 2 ms until they pass (no TCP polling of our own: the
    dev-server child said it listens); then wait for its ServerReady. The client, once the server it
    reached is the ready one; None when it was condemned meanwhile, or became ready while our attempts
    still failed (the caller's normal attempt then says why, and backs off)."""
    pid = cell.booting_pid
    if pid is None:
        return None
    client = None
    with cell.server_scope(booting=True):
        while client is None and not cell.server_up:
            impostor = None
            try:
                client, impostor = await _checked_attempt(
                    temporal, config, cell, pid, owner_check, booting=True
                )
            except (TemporalUnavailable, trio.TooSlowError, ConfigError):
                client = None
            if impostor is not None:
                client = None
            if client is None:
                await cell.wait_poke(_BOOT_POLL, Poke.SERVER_READY)
        if client is not None:
            await cell.wait_server_up()
    if client is None or not cell.server_up or cell.server_pid != pid:
        return None
    return client


async def _impostor(
    config: ConnectionConfig,
    pid: int | None,
    cell: ConnectionCell,
    owner_check: Callable[[int, int], bool] | None,
) -> str | None:
    """Why what answered at the address is not the followed dev server `pid` (None: it is, or not
    following)."""
    if owner_check is None or not cell.follow_server or pid is None:
        return None
    port = int(config.address.rpartition(":")[2])
    if await trio.to_thread.run_sync(owner_check, pid, port):
        return None
    return f"what answers at {config.address} is not the dev server (pid {pid}): refusing it"


async def _connect_material(config: ConnectionConfig) -> tuple[bool | TlsMaterial, str | None]:
    """This connect's TLS material and API key: the files are read again now, in a thread (a rotated
    certificate or key is used from the next reconnect on); a config without files reads nothing.
    ConfigError (an unreadable or unsafe file) fails the attempt like an unreachable server."""
    if reads_files(config):
        return await trio.to_thread.run_sync(connect_material, config)
    return connect_material(config)


def _current(cell: ConnectionCell, generation: int) -> bool:
    """Is the server we connected to still the current ready one? (Always, when not following one.)"""
    return not cell.follow_server or (cell.server_up and cell.server_generation == generation)


async def _back_off(temporal: Bridge, config: ConnectionConfig, cell: ConnectionCell, delay: float) -> bool:
    """Wait `delay` before the next connect attempt, but go at once when the server is back.

    While the port refuses TCP, a cheap TCP probe every 20 ms (and a dev server's ServerReady) ends the
    wait as soon as the server listens again: a full Client.connect is only worth its cost then. If the
    port already accepts (the server is up but the connect failed), the full backoff applies.
    Returns True when it ended early because the server came back.
    """
    deadline = trio.current_time() + delay
    if await temporal.tcp_accepts(config.address):
        return await cell.wait_poke(delay, Poke.SERVER_READY) is not None
    while (remaining := deadline - trio.current_time()) > 0:
        woken = await cell.wait_poke(min(_TCP_POLL, remaining), Poke.SERVER_READY)
        if woken or await temporal.tcp_accepts(config.address):
            return True
    return False


async def _watch(temporal: Bridge, config: ConnectionConfig, cell: ConnectionCell, client: Client) -> str:
    """Probe every health_interval (or at once when poked); return why the connection is down.

    Not the same probe as the dev-server child's, although both may hit one server: that one asks "is
    the server process alive and serving?" (check_health and every namespace, on a client of its own,
    `failures_to_restart` failures in a row) and its answer kills and replaces the process; this one
    asks "does the runtime's own client work?" (one health RPC on the channel every call uses) and its
    answer, at the first failure, makes calls fail fast and reconnects. Merging them would lose one of
    the two: in external mode there is no dev-server child, a broken client channel to a healthy server
    shows only here, and killing a process wants failures in a row where failing calls fast wants the
    first one. Both stay: a loopback health RPC costs ~1 ms.
    """
    while True:
        woken = await cell.wait_poke(config.health_interval, Poke.SERVER_EXITED, Poke.PROBE)
        if woken is Poke.SERVER_EXITED:
            return "the dev server exited"
        began = trio.current_time()
        try:
            with cell.server_scope() as scope:
                await temporal.check_health(client, timeout=config.health_timeout)
            if scope.cancelled_caught:
                return "the dev server exited"
        except Exception as exc:  # any failed probe means "not healthy", never a crash of this child
            why = str(exc) if isinstance(exc, TemporalUnavailable) else f"{type(exc).__name__}: {exc}"
            cell.report(HealthChecked(config.address, False, trio.current_time() - began, why))
            return why if isinstance(exc, TemporalUnavailable) else f"health check failed: {why}"
        cell.report(HealthChecked(config.address, True, trio.current_time() - began))
