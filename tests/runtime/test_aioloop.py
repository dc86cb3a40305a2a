"""The batched trio-asyncio loop (_boundary/_aioloop): asyncio's ordering and timers, one Trio scheduler
pass per batch instead of per callback, coalesced wake-ups from threads, and trio-asyncio's bridging
(cancellation, trio_as_aio, TrioExecutor jobs calling back into Trio) unchanged."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from stigmer_trio._boundary._aioloop import (
    _BATCHES_PER_TURN,
    BatchedTrioEventLoop,
    ThreadCacheExecutor,
    _adopt,
    open_loop,
)


@pytest.fixture
async def loop() -> AsyncIterator[BatchedTrioEventLoop]:
    async with open_loop() as opened:
        yield opened


class LoopSteps(trio.abc.Instrument):
    """Counts the steps (scheduler passes) of trio-asyncio's main-loop task."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._main_loop"):
            self.steps += 1


class TestQueue:
    async def test_is_the_batched_loop(self, loop: BatchedTrioEventLoop) -> None:
        """open_loop() gives trio-asyncio's loop re-classed, and asyncio code finds it."""

        async def running() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        assert isinstance(loop, trio_asyncio.TrioEventLoop)
        assert loop is await trio_asyncio.aio_as_trio(running)()

    async def test_callbacks_run_in_order(self, loop: BatchedTrioEventLoop) -> None:
        """call_soon and call_soon_threadsafe (from the Trio thread) run in the order queued."""
        ran: list[int] = []
        for number in range(10):
            queue = loop.call_soon_threadsafe if number % 3 else loop.call_soon
            queue(ran.append, number)
        await loop.synchronize()
        assert list(range(10)) == ran

    async def test_one_scheduler_pass_per_batch(self, loop: BatchedTrioEventLoop) -> None:
        """1000 callbacks queued at once run in one turn of the loop task, not one turn each."""
        await loop.synchronize()
        steps = LoopSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            ran: list[int] = []
            for number in range(1000):
                loop.call_soon(ran.append, number)
            await loop.synchronize()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert list(range(1000)) == ran
        assert steps.steps <= 3

    async def test_a_callback_chain_does_not_starve_trio(self, loop: BatchedTrioEventLoop) -> None:
        """A callback that queues itself again runs in the next batch; a turn runs a few batches at most,
        so Trio tasks still get their turns."""
        spins = 0
        spinning = True

        def spin() -> None:
            nonlocal spins
            spins += 1
            if spinning:
                loop.call_soon(spin)

        loop.call_soon(spin)
        for _ in range(20):
            await trio.sleep(0)
        spinning = False
        await loop.synchronize()
        assert 10 <= spins <= 22 * _BATCHES_PER_TURN

    async def test_threadsafe_callbacks_all_run_with_fewer_wakeups(self, loop: BatchedTrioEventLoop) -> None:
        """Callbacks queued from other threads all run, each thread's in order; their wake-ups of Trio
        are coalesced (at most one on its way at a time)."""
        token = loop._token
        wakeups = 0

        class CountingToken:
            def run_sync_soon(self, fn: Any, *args: Any) -> None:
                nonlocal wakeups
                wakeups += 1
                token.run_sync_soon(fn, *args)

        loop._token = CountingToken()
        ran: list[tuple[int, int]] = []
        per_thread = 500

        def produce(thread: int) -> None:
            for number in range(per_thread):
                loop.call_soon_threadsafe(ran.append, (thread, number))

        try:
            async with trio.open_nursery() as nursery:
                for thread in range(4):
                    nursery.start_soon(trio.to_thread.run_sync, produce, thread)
            await loop.synchronize()
        finally:
            loop._token = token
        assert 4 * per_thread == len(ran)
        for thread in range(4):
            assert list(range(per_thread)) == [number for who, number in ran if who == thread]
        assert wakeups < len(ran) / 2

    async def test_adopt_refuses_other_loops(self) -> None:
        """Only trio-asyncio's own TrioEventLoop can be re-classed."""
        plain = asyncio.SelectorEventLoop()
        try:
            with pytest.raises(TypeError, match="TrioEventLoop"):
                _adopt(plain)
        finally:
            plain.close()


class TestTimers:
    async def test_sleep_ends_on_time(self, loop: BatchedTrioEventLoop, autojump_clock: Any) -> None:
        """asyncio.sleep(5) ends at Trio time 5: the parked loop's deadline is the timer's."""
        await trio_asyncio.aio_as_trio(asyncio.sleep)(5)
        assert 5 == trio.current_time()

    async def test_earlier_timer_while_parked(self, loop: BatchedTrioEventLoop, autojump_clock: Any) -> None:
        """A timer queued while the loop waits for a later one fires at its own time."""
        ended: dict[str, float] = {}

        async def sleep(name: str, seconds: float) -> None:
            await trio_asyncio.aio_as_trio(asyncio.sleep)(seconds)
            ended[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleep, "long", 10)
            await trio.sleep(0.5)
            nursery.start_soon(sleep, "short", 1)
        assert {"short": 1.5, "long": 10} == ended

    async def test_cancelled_timers_leave_the_heap(
        self, loop: BatchedTrioEventLoop, autojump_clock: Any
    ) -> None:
        """Cancelled timers do not stay queued (nor wake the loop): the heap is compacted as asyncio's."""
        timers = [loop.call_later(100 + n, lambda: None) for n in range(300)]
        for timer in timers:
            timer.cancel()
        await loop.synchronize()
        await trio.sleep(1)
        assert [] == loop._timers
        assert 0 == loop._timer_cancelled_count

    async def test_cancelled_timer_does_not_run(
        self, loop: BatchedTrioEventLoop, autojump_clock: Any
    ) -> None:
        """A cancelled call_later never runs; the others do, in time order."""
        ran: list[str] = []
        loop.call_later(2, ran.append, "two")
        loop.call_later(1, ran.append, "one").cancel()
        loop.call_later(3, ran.append, "three")
        await trio.sleep(5)
        assert ["two", "three"] == ran


class TestBridging:
    async def test_trio_cancellation_reaches_asyncio(
        self, loop: BatchedTrioEventLoop, autojump_clock: Any
    ) -> None:
        """A Trio deadline cancels the asyncio coroutine it waits for (CancelledError inside it)."""
        seen: list[str] = []

        async def wait() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        with trio.move_on_after(1):
            await trio_asyncio.aio_as_trio(wait)()
        assert ["cancelled"] == seen
        assert 1 == trio.current_time()

    async def test_trio_inside_asyncio(self, loop: BatchedTrioEventLoop, autojump_clock: Any) -> None:
        """asyncio code awaits Trio code through trio_as_aio (a Trio task started from the queue)."""

        async def trio_part(value: int) -> int:
            await trio.sleep(1)
            return value * 2

        async def asyncio_part() -> int:
            result: int = await trio_asyncio.trio_as_aio(trio_part)(21)
            return result

        assert 42 == await trio_asyncio.aio_as_trio(asyncio_part)()
        assert 1 == trio.current_time()

    async def test_trio_executor_job_calls_trio(self, loop: BatchedTrioEventLoop) -> None:
        """A TrioExecutor job (a sync activity) may call back into Trio with trio.from_thread."""

        def job() -> int:
            trio.from_thread.run(trio.sleep, 0)
            return 42

        async def run() -> int:
            result: int = await asyncio.get_running_loop().run_in_executor(trio_asyncio.TrioExecutor(), job)
            return result

        assert 42 == await trio_asyncio.aio_as_trio(run)()

    async def test_thread_cache_executor(self, loop: BatchedTrioEventLoop) -> None:
        """A plain executor runs its job in another thread; its result and its exception come back."""
        main = threading.get_ident()

        def job(fail: bool) -> int:
            if fail:
                raise ValueError("job failed")
            return threading.get_ident()

        async def run(fail: bool) -> int:
            result: int = await asyncio.get_running_loop().run_in_executor(ThreadCacheExecutor(), job, fail)
            return result

        assert main != await trio_asyncio.aio_as_trio(run)(False)
        with pytest.raises(ValueError, match="job failed"):
            await trio_asyncio.aio_as_trio(run)(True)

    async def test_thread_cache_executor_shutdown_does_not_wait(self) -> None:
        """shutdown() returns while a job still runs (a stuck workflow cannot hold the Trio thread)."""
        executor = ThreadCacheExecutor()
        release = threading.Event()
        future = executor.submit(release.wait, 10)
        executor.shutdown(wait=True)
        assert not future.done()
        release.set()
        assert future.result(timeout=10)

    async def test_leaving_cancels_asyncio_tasks(self, autojump_clock: Any) -> None:
        """Leaving open_loop() cancels the asyncio tasks still running, as trio-asyncio's does."""
        seen: list[str] = []

        async def forever() -> None:
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        async with open_loop() as opened:
            opened.create_task(forever())
            await trio.sleep(1)
        assert ["cancelled"] == seen
