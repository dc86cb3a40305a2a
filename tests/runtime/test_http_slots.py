"""The control endpoint's connection cap (Slots), with fake connections in virtual time: no sockets."""

from __future__ import annotations

import trio
import trio.testing

from stigmer_trio._tree._serve_http import Slots


class Fake:
    """A connection that is waiting for its request, or not (busy, or its request is already unread)."""

    def __init__(self, name: str, waiting: bool) -> None:
        self.name = name
        self.is_waiting = waiting

    def waiting(self) -> bool:
        return self.is_waiting


async def hold(slots: Slots, connection: Fake, closed: list[str], task_status: trio.TaskStatus[None]) -> None:
    """A connection task: holds its slot until cancelled (closed to make room), then records that."""
    with slots.hold(connection):
        task_status.started()
        await trio.sleep_forever()
    closed.append(connection.name)


class TestSlots:
    async def test_free_slots_are_taken_at_once(self, autojump_clock: trio.testing.MockClock) -> None:
        """Below the cap, take() returns without waiting or closing anything."""
        slots = Slots(3)
        for _ in range(3):
            await slots.take()
        assert (0, 0.0) == (slots.free, trio.current_time())

    async def test_full_closes_the_oldest_waiting_connection(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Every slot taken: the oldest connection that is only waiting is closed (a busy one is kept, and
        so is a younger waiting one), and the newcomer gets its slot at once."""
        slots = Slots(3)
        closed: list[str] = []
        async with trio.open_nursery() as nursery:
            busy, old, young = Fake("busy", False), Fake("idle-old", True), Fake("idle-young", True)
            for connection in (busy, old, young):
                await slots.take()
                await nursery.start(hold, slots, connection, closed)
            await slots.take()
            assert (["idle-old"], 0.0) == (closed, trio.current_time())
            assert [busy, young] == list(slots.live)
            nursery.cancel_scope.cancel(reason="test over")

    async def test_none_waiting_waits_for_a_slot(self, autojump_clock: trio.testing.MockClock) -> None:
        """Every connection busy: nothing is closed; the newcomer waits until one ends (its request done)."""
        slots = Slots(2)
        closed: list[str] = []
        busy = [Fake("a", False), Fake("b", False)]
        async with trio.open_nursery() as nursery:
            for connection in busy:
                await slots.take()
                await nursery.start(hold, slots, connection, closed)

            async def end_b() -> None:
                await trio.sleep(7.0)
                slots.live[busy[1]].cancel(reason="its request is done")

            nursery.start_soon(end_b)
            await slots.take()
            assert (["b"], 7.0) == (closed, trio.current_time())
            nursery.cancel_scope.cancel(reason="test over")

    async def test_a_connection_that_becomes_waiting_is_closed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Every connection busy, then one finishes its request and waits for the next: it is closed for the
        newcomer within Slots.RECHECK (or at once when it says so through changed())."""
        slots = Slots(1)
        closed: list[str] = []
        connection = Fake("keep-alive", False)
        async with trio.open_nursery() as nursery:
            await slots.take()
            await nursery.start(hold, slots, connection, closed)

            async def finish_request() -> None:
                await trio.sleep(3.0)
                connection.is_waiting = True

            nursery.start_soon(finish_request)
            await slots.take()
            assert ["keep-alive"] == closed
            assert 3.0 <= trio.current_time() <= 3.0 + Slots.RECHECK
            nursery.cancel_scope.cancel(reason="test over")

    async def test_one_closing_at_a_time(self, autojump_clock: trio.testing.MockClock) -> None:
        """While a connection closed for room has not yet given its slot back, no second one is closed."""
        slots = Slots(2)
        closed: list[str] = []
        lingering = trio.Event()

        async def slow_to_close(connection: Fake, task_status: trio.TaskStatus[None]) -> None:
            with slots.hold(connection):
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(2.0)  # its close takes a while
                        lingering.set()
            closed.append(connection.name)

        async with trio.open_nursery() as nursery:
            for name in ("first", "second"):
                await slots.take()
                await nursery.start(slow_to_close, Fake(name, True))
            await slots.take()
            assert (["first"], 2.0) == (closed, trio.current_time())
            nursery.cancel_scope.cancel(reason="test over")
