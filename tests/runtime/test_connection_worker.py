"""The connection state machine and the worker lifecycle in virtual time, with a fake Temporal bridge."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from stigmer_trio import (
    ConnectionConfig,
    ConnectionState,
    ConnectionStateChanged,
    RestartPolicy,
    ServerExited,
    ServerListening,
    ServerReady,
    TemporalUnavailable,
    WorkerSpec,
)
from stigmer_trio._tree._cell import ConnectionCell
from stigmer_trio._tree._hub import EventHub
from stigmer_trio._tree._serve_connection import serve_connection
from stigmer_trio._tree._serve_worker import WorkerFailed, WorkerStatus, serve_worker

POLICY = RestartPolicy(
    initial_delay=0.05, backoff=0.05, multiplier=2.0, max_delay=2.0, jitter=0.0, max_restarts=None
)
CONFIG = ConnectionConfig(address="127.0.0.1:1", health_interval=1.0, health_timeout=0.5, policy=POLICY)


@attrs.define
class FakeTemporal:
    """Stands in for the temporalio bridge (a stigmer_trio._boundary._bridge.Bridge): `up` says whether
    the server answers; its Workers are `workers`."""

    up: bool = False
    hung: bool = False
    connects: list[float] = attrs.Factory(list)
    probes: list[float] = attrs.Factory(list)
    clients: int = 0
    namespace_missing: bool = False  # DescribeNamespace fails although the server answers
    described: list[str] = attrs.Factory(list)
    workers: FakeWorkers = attrs.Factory(lambda: FakeWorkers())

    def make_worker(self, client: Any, spec: WorkerSpec, on_fatal_error: Any) -> int:
        return self.workers.make_worker(client, spec, on_fatal_error)

    async def run_worker(self, worker: int) -> None:
        await self.workers.run_worker(worker)

    async def shutdown_worker(self, worker: int) -> None:
        await self.workers.shutdown_worker(worker)

    async def connect(self, address: str, namespace: str, **kwargs: Any) -> Any:
        self.connects.append(trio.current_time())
        await trio.sleep(0.001)
        if not self.up:
            raise TemporalUnavailable("connection refused")
        self.clients += 1
        return f"client-{self.clients}"

    async def tcp_accepts(self, address: str) -> bool:
        await trio.sleep(0)
        return self.up

    async def describe_namespace(self, client: Any, namespace: str, *, timeout: float) -> None:
        self.described.append(namespace)
        await self.check_health(client, timeout=timeout)
        if self.namespace_missing:
            raise TemporalUnavailable("namespace not found")

    async def check_health(self, client: Any, *, timeout: float) -> None:
        self.probes.append(trio.current_time())
        if self.hung:
            await trio.sleep(timeout)
            raise TemporalUnavailable("no answer in time")
        if not self.up:
            raise TemporalUnavailable("UNAVAILABLE")


@pytest.fixture
def fake() -> FakeTemporal:
    """The bridge the children are handed (bridge=...): the server (`up`, `hung`) and its Workers."""
    return FakeTemporal()


def transitions(events: list[Any]) -> list[tuple[float, str]]:
    return [(round(t, 3), e.new) for t, e in events if isinstance(e, ConnectionStateChanged)]


@contextlib.asynccontextmanager
async def connection(hub: EventHub, bridge: Any) -> AsyncIterator[tuple[ConnectionCell, trio.Nursery]]:
    """A running connection child on `bridge` (and its nursery, for siblings); cancelled at the end."""
    async with trio.open_nursery() as nursery:
        cell = await open_connection(nursery, hub, bridge=bridge)
        yield cell, nursery
        nursery.cancel_scope.cancel()


async def open_connection(
    nursery: trio.Nursery, hub: EventHub, config: ConnectionConfig = CONFIG, *, bridge: Any
) -> ConnectionCell:
    cell = ConnectionCell(emit=hub.emit)
    await nursery.start(functools.partial(serve_connection, config, cell, hub, bridge=bridge))
    return cell


def recording_hub() -> tuple[EventHub, list[tuple[float, Any]]]:
    events: list[tuple[float, Any]] = []
    return EventHub((lambda event: events.append((trio.current_time(), event)),)), events


class TestConnection:
    async def test_started_at_once_and_backs_off_while_down(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """started() does not wait for Temporal; attempts back off 50 ms, 50 ms, then doubling to 2 s."""
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            assert 0 == trio.current_time()
            await trio.sleep(10)
            gaps = [round(b - a, 3) for a, b in zip(fake.connects, fake.connects[1:], strict=False)]
            assert [0.051, 0.051, 0.101, 0.201, 0.401, 0.801, 1.601, 2.001, 2.001] == gaps[:9]
            assert cell.state in (ConnectionState.CONNECTING, ConnectionState.DISCONNECTED)
        assert ConnectionState.CLOSED == cell.state

    async def test_fail_fast_while_down(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """client() raises TemporalUnavailable at once, naming the state and the last error."""
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await trio.sleep(0.01)
            with pytest.raises(TemporalUnavailable, match="Temporal is disconnected: connection refused"):
                cell.client()

    async def test_connects_when_temporal_comes_up(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Temporal starting later is picked up by the next attempt: CONNECTED, epoch 1, a client."""
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await trio.sleep(1)
            fake.up = True
            with trio.fail_after(2.5):
                client, epoch = await cell.wait_connected()
            assert ("client-1", 1, "client-1") == (client, epoch, cell.client())

    async def test_listening_port_ends_the_backoff(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """External mode: a port that accepts again ends the 2 s backoff within one 20 ms TCP poll."""
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await trio.sleep(5)
            fake.up = True
            back_at = trio.current_time()
            await cell.wait_connected()
            assert trio.current_time() - back_at <= 0.025

    async def test_server_ready_skips_the_backoff(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A ServerReady event reconnects at once instead of waiting out the backoff."""
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await trio.sleep(5)  # deep into the 2 s backoff
            fake.up = True
            ready_at = trio.current_time()
            hub.emit(ServerReady("127.0.0.1:1", 1, adopted=False, ready_after=0.1))
            await cell.wait_connected()
            assert trio.current_time() - ready_at < 0.01

    async def test_one_failed_probe_disconnects(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The first failed health probe drops to DISCONNECTED; the next connection is a new epoch."""
        fake.up = True
        hub, events = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await cell.wait_connected()
            await trio.sleep(2.5)
            fake.up = False
            await trio.sleep(1)
            assert ConnectionState.CONNECTED is not cell.state
            fake.up = True
            await cell.wait_connected()
            assert (2, 1) == (cell.epoch, cell.reconnects)
        states = [new for _, new in transitions(events)]
        assert ["connected", "disconnected", "connecting"] == states[:3]
        assert "connected" == states[-2]  # then "closed"

    async def test_hang_detected_within_interval_plus_timeout(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A hung server is noticed within health_interval + health_timeout."""
        fake.up = True
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await cell.wait_connected()
            fake.hung = True
            hung_at = trio.current_time()
            await cell.wait_until(lambda c: c.state is not ConnectionState.CONNECTED)
            assert trio.current_time() - hung_at <= CONFIG.health_interval + CONFIG.health_timeout

    async def test_server_exited_disconnects_at_once(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A ServerExited event drops to DISCONNECTED immediately, without waiting for a probe."""
        fake.up = True
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await cell.wait_connected()
            await trio.sleep(0.3)
            exited_at = trio.current_time()
            hub.emit(ServerExited("127.0.0.1:1", 1, -9, "killed"))
            await cell.wait_until(lambda c: c.state is not ConnectionState.CONNECTED)
            assert exited_at == trio.current_time()
            assert "the dev server exited" == cell.last_error

    async def test_probe_request_checks_at_once(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A request that met UNAVAILABLE pokes the monitor: it probes now, not at the next interval."""
        fake.up = True
        hub, _ = recording_hub()
        async with connection(hub, fake) as (cell, _nursery):
            await cell.wait_connected()
            await trio.sleep(0.2)
            fake.up = False
            poked_at = trio.current_time()
            cell.poke("probe")
            await cell.wait_until(lambda c: c.state is not ConnectionState.CONNECTED)
            assert trio.current_time() - poked_at < 0.01


@attrs.define
class FakeWorkers:
    """Workers that run until shut down; `fail_after` makes the next run raise after that many seconds."""

    built: list[tuple[float, Any]] = attrs.Factory(list)
    shutdowns: list[float] = attrs.Factory(list)
    fail_after: float | None = None
    shutdown_hangs: bool = False
    unwind: float = 0.0  # seconds a cancelled run() takes to return (the trio-asyncio round trip)
    stops: dict[int, trio.Event] = attrs.Factory(dict)
    unwound: list[float] = attrs.Factory(list)

    def make_worker(self, client: Any, spec: WorkerSpec, on_fatal_error: Any) -> int:
        self.built.append((trio.current_time(), client))
        index = len(self.built)
        self.stops[index] = trio.Event()
        return index

    async def run_worker(self, worker: int) -> None:
        if self.fail_after is not None:
            await trio.sleep(self.fail_after)
            raise RuntimeError("Workflow worker failed")
        try:
            await self.stops[worker].wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.unwind)
            self.unwound.append(trio.current_time())
            raise

    async def shutdown_worker(self, worker: int) -> None:
        self.shutdowns.append(trio.current_time())
        if self.shutdown_hangs:
            await trio.sleep_forever()
        self.stops[worker].set()


@pytest.fixture
def workers(fake: FakeTemporal) -> FakeWorkers:
    """The Workers of `fake`."""
    return fake.workers


SPEC = WorkerSpec("q", graceful_shutdown_timeout=2.0)


class TestWorker:
    @pytest.mark.parametrize("unwind", [0.0, 0.5])
    async def test_replaced_at_once_on_a_new_epoch(
        self, fake: FakeTemporal, workers: FakeWorkers, autojump_clock: trio.testing.MockClock, unwind: float
    ) -> None:
        """Each new connection epoch gets a fresh Worker on the new client, right away: also when the
        replaced Worker's cancelled run() takes `unwind` seconds to return (it does so in the
        background, after the new Worker is polling)."""
        fake.up = True
        workers.unwind = unwind
        hub, _ = recording_hub()
        status = WorkerStatus("q")
        async with connection(hub, fake) as (cell, nursery):
            await nursery.start(functools.partial(serve_worker, SPEC, cell, status, hub.emit, bridge=fake))
            await cell.wait_connected()
            await trio.sleep(0.5)
            assert (True, 1) == (status.running, status.epoch)
            hub.emit(ServerExited("127.0.0.1:1", 1, -9, "killed"))
            await trio.testing.wait_all_tasks_blocked()  # the connection child took it: DISCONNECTED
            assert ConnectionState.DISCONNECTED is cell.state
            reconnect = trio.current_time()
            hub.emit(ServerReady("127.0.0.1:1", 2, adopted=False, ready_after=0.1))
            await cell.wait_until(lambda c: c.epoch == 2)
            await trio.testing.wait_all_tasks_blocked()  # the worker child saw the epoch and built
            assert ["client-1", "client-2"] == [client for _, client in workers.built]
            assert workers.built[1][0] - reconnect < 0.01
            assert (True, 2) == (status.running, status.epoch)
            await trio.sleep(1.0)
            assert 1 == len(workers.unwound)  # the old run() did unwind, `unwind` later
            assert workers.unwound[0] - reconnect == pytest.approx(unwind, abs=0.01)
        assert not status.running

    async def test_a_failing_worker_ends_its_lifetime(
        self, fake: FakeTemporal, workers: FakeWorkers, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Worker.run() raising ends the child with WorkerFailed, for the Supervisor to restart."""
        fake.up = True
        workers.fail_after = 3.0
        hub, _ = recording_hub()
        status = WorkerStatus("q")
        async with connection(hub, fake) as (cell, _nursery):
            for lifetime in range(2):  # as the Supervisor would run it again
                with pytest.raises(WorkerFailed, match="Workflow worker failed"):
                    await serve_worker(SPEC, cell, status, hub.emit, bridge=fake)
                assert lifetime == status.restarts

    async def test_shutdown_is_bounded(
        self, fake: FakeTemporal, workers: FakeWorkers, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A Worker whose shutdown hangs (a hung server) is given graceful_shutdown_timeout + 1 s, no more."""
        fake.up = True
        workers.shutdown_hangs = True
        hub, _ = recording_hub()
        status = WorkerStatus("q")
        async with connection(hub, fake) as (cell, _nursery):
            async with trio.open_nursery() as inner:
                await inner.start(functools.partial(serve_worker, SPEC, cell, status, hub.emit, bridge=fake))
                await cell.wait_connected()
                await trio.sleep(0.1)
                stop_at = trio.current_time()
                inner.cancel_scope.cancel()
            assert SPEC.graceful_shutdown_timeout + 1.0 == pytest.approx(trio.current_time() - stop_at)


async def open_following(
    nursery: trio.Nursery,
    hub: EventHub,
    bridge: Any,
    owner_check: Any = None,
    registered: frozenset[str] = frozenset(),
) -> ConnectionCell:
    """A connection child that follows a supervised dev server (its events), as in dev-server mode."""
    cell = ConnectionCell(emit=hub.emit, follow_server=True, registered=registered)
    hub.add_hook(cell.on_event)
    serve = functools.partial(serve_connection, CONFIG, cell, hub, bridge=bridge, owner_check=owner_check)
    await nursery.start(serve)
    return cell


class TestFollowingABootingServer:
    """ServerListening: the connection child connects while the server boots, beside the dev-server
    child's readiness checks, and counts the connection only at that server's ServerReady."""

    async def test_connects_while_it_boots_and_is_connected_at_its_ready(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Once the booting server listens (ServerListening), the connection connects (retrying while
        the server does not answer yet), beside the dev-server child's checks; CONNECTED comes at the
        instant of ServerReady, with that early client (no second connect)."""
        hub, events = recording_hub()
        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake)
            await trio.sleep(0.1)
            assert [] == fake.connects  # no server listens yet: nothing is tried
            hub.emit(ServerListening("127.0.0.1:1", 7))
            await trio.sleep(0.05)
            assert len(fake.connects) > 1  # it listens but does not answer: retried every few ms
            fake.up = True
            answered = trio.current_time()
            await trio.sleep(0.2)
            succeeded = [t for t in fake.connects if t >= answered]
            assert 1 == len(succeeded)
            assert succeeded[0] - answered < 0.005
            assert ConnectionState.CONNECTING is cell.state  # not before the server is ready
            ready_at = trio.current_time()
            hub.emit(ServerReady("127.0.0.1:1", 7, adopted=False, ready_after=0.3))
            client, epoch = await cell.wait_connected()
            assert ("client-1", 1) == (client, epoch)
            assert ready_at == trio.current_time()
            assert 1 == len([t for t in fake.connects if t >= answered])
            nursery.cancel_scope.cancel()
        assert ["connected"] == [new for _, new in transitions(events) if new == "connected"]

    async def test_condemned_while_booting_is_never_connected(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A server that answers but is condemned before its ServerReady never becomes an epoch; its
        successor does."""
        fake.up = True
        hub, _ = recording_hub()
        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake)
            hub.emit(ServerListening("127.0.0.1:1", 7))
            await trio.sleep(0.1)
            assert 1 == len(fake.connects)  # connected early, waiting for its ServerReady
            hub.emit(ServerExited("127.0.0.1:1", 7, None, "failed to start"))
            await trio.sleep(0.5)
            assert (0, ConnectionState.CONNECTING) == (cell.epoch, cell.state)
            hub.emit(ServerListening("127.0.0.1:1", 8))
            await trio.sleep(0.05)
            hub.emit(ServerReady("127.0.0.1:1", 8, adopted=False, ready_after=0.05))
            client, epoch = await cell.wait_connected()
            assert ("client-2", 1) == (client, epoch)
            nursery.cancel_scope.cancel()

    async def test_an_impostor_on_the_port_is_never_connected(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """What answers while the server boots must be its own listener: when another process owns
        it, the early client is dropped and, once the server is ready, the refusal is said."""
        fake.up = True
        hub, _ = recording_hub()
        owners: list[tuple[int, int]] = []

        def not_ours(pid: int, port: int) -> bool:
            owners.append((pid, port))
            return False

        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake, owner_check=not_ours)
            hub.emit(ServerListening("127.0.0.1:1", 7))
            while not owners:  # the check runs in a thread (real time)
                await trio.sleep(0.01)
            assert (7, 1) == owners[0]
            hub.emit(ServerReady("127.0.0.1:1", 7, adopted=False, ready_after=0.05))
            await cell.wait_until(lambda c: c.state is ConnectionState.DISCONNECTED)
            assert "is not the dev server (pid 7)" in (cell.last_error or "")
            assert 0 == cell.epoch
            nursery.cancel_scope.cancel()

    async def test_ready_while_attempts_fail_says_why(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The server is ready but our own attempt keeps failing (say, a namespace it lacks): the
        early attempts stop and the ordinary one reports the failure (DISCONNECTED, its reason)."""
        hub, _ = recording_hub()
        fake.up = fake.namespace_missing = True
        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake)
            hub.emit(ServerListening("127.0.0.1:1", 7))
            await trio.sleep(0.05)
            assert ConnectionState.CONNECTING is cell.state  # quiet while it boots
            hub.emit(ServerReady("127.0.0.1:1", 7, adopted=False, ready_after=0.05))
            await cell.wait_until(lambda c: c.state is ConnectionState.DISCONNECTED)
            assert "namespace not found" == cell.last_error
            nursery.cancel_scope.cancel()

    async def test_a_condemned_servers_worker_is_retired_at_once(
        self, fake: FakeTemporal, workers: FakeWorkers, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The followed server is condemned: its Worker stops polling now (not at the next epoch, after
        the successor's boot), and the successor's ServerReady brings a new one."""
        fake.up = True
        hub, _ = recording_hub()
        status = WorkerStatus("q")
        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake)
            await nursery.start(functools.partial(serve_worker, SPEC, cell, status, hub.emit, bridge=fake))
            hub.emit(ServerListening("127.0.0.1:1", 7))
            hub.emit(ServerReady("127.0.0.1:1", 7, adopted=False, ready_after=0.1))
            await cell.wait_connected()
            await trio.testing.wait_all_tasks_blocked()
            assert (True, 1) == (status.running, status.epoch)
            hub.emit(ServerExited("127.0.0.1:1", 7, -9, "killed"))
            await trio.testing.wait_all_tasks_blocked()
            assert not status.running
            assert 1 == len(workers.unwound)  # its run() was cancelled: no more polls of a dead port
            hub.emit(ServerListening("127.0.0.1:1", 8))
            await trio.sleep(0.2)
            assert 1 == len(workers.built)  # nothing new while the successor boots
            hub.emit(ServerReady("127.0.0.1:1", 8, adopted=False, ready_after=0.2))
            await cell.wait_until(lambda c: c.epoch == 2)
            await trio.testing.wait_all_tasks_blocked()
            assert (True, 2, 2) == (status.running, status.epoch, len(workers.built))
            nursery.cancel_scope.cancel()

    @pytest.mark.parametrize("registered", [frozenset(), frozenset({"default"})])
    async def test_a_registered_namespace_is_not_described(
        self, fake: FakeTemporal, autojump_clock: trio.testing.MockClock, registered: frozenset[str]
    ) -> None:
        """The connection's namespace is one the followed server registers before it serves: the
        attempt checks health instead of describing it. Any other namespace is described."""
        fake.up = True
        hub, _ = recording_hub()
        async with trio.open_nursery() as nursery:
            cell = await open_following(nursery, hub, fake, registered=registered)
            hub.emit(ServerListening("127.0.0.1:1", 7))
            hub.emit(ServerReady("127.0.0.1:1", 7, adopted=False, ready_after=0.1))
            await cell.wait_connected()
            assert ([] if registered else [CONFIG.namespace]) == fake.described
            nursery.cancel_scope.cancel()
