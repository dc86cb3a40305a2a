# The asyncio loop the runtime runs temporalio on: trio-asyncio's, with its callback queue batched the way
# asyncio's own loop runs it. trio-asyncio 0.16 runs ONE asyncio callback per turn of its main-loop task:
# each callback costs a memory-channel receive, a cancel scope (`move_on_after`) and a full Trio
# scheduler pass (an epoll_wait) of its own, and every `call_soon_threadsafe` (how the SDK's Rust core
# hands back each result) a wake-up byte on Trio's socket. Here, as in asyncio's `_run_once`, a batch
# runs every callback that is ready when it begins, and a turn runs a few batches before it yields to
# Trio once; callbacks are checked in debug mode only, as asyncio's are; the loop task parks without a
# cancel scope unless a live timer needs a deadline; cancelled timers leave the heap's head at once; and
# wake-ups from other threads are coalesced (one pending `run_sync_soon` at a time).
#
# Rule: trio-asyncio's own `open_loop()` still builds, runs and tears the loop down (its nurseries,
# cancellation forwarding, shutdown drain): `open_loop()` here only re-classes the loop it opened (see
# `_adopt`), so asyncio and Trio semantics stay trio-asyncio's and only the queue underneath changes.
# Must never: run a callback off the Trio thread, or drop one (everything queued runs, in order).
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio
import trio_asyncio
from sniffio import thread_local as sniffio_library
from trio_asyncio._handles import AsyncHandle

__all__ = ["BatchedTrioEventLoop", "ThreadCacheExecutor", "open_loop"]

# A turn runs up to this many batches back to back while callbacks are ready (asyncio iterations whose I/O
# poll is skipped: the loop's own I/O comes through Trio), then yields to Trio's other tasks.
_BATCHES_PER_TURN = 4

# As asyncio's loop: compact the timer heap once more than half of at least 100 timers are cancelled.
T = TypeVar("T")

_MIN_TIMERS_TO_COMPACT = 100
_CANCELLED_FRACTION_TO_COMPACT = 0.5


class BatchedTrioEventLoop(trio_asyncio.TrioEventLoop):  # type: ignore[misc]  # untyped base
    """trio-asyncio's TrioEventLoop with asyncio's batched callback queue (see the module comment).

    Only `_adopt` makes one: the loop must have been built and started by `trio_asyncio.open_loop()`.
    Also runs a plain `concurrent.futures.Executor` (`run_in_executor`), as asyncio does; a TrioExecutor
    still runs its jobs in Trio worker threads (so `trio.from_thread` works in them).
    """

    _runnable: deque[asyncio.Handle]  # ready callbacks, in order (appended from any thread)
    _parked: trio.lowlevel.Task | None  # the main-loop task while it waits for work
    _park_scope: trio.CancelScope | None  # its deadline while a live timer is pending
    _wakeup_pending: bool  # a wake-up from another thread is on its way (coalesces the rest)
    _trio_thread: int
    _channel_drained: bool  # the base class's queue has been taken over
    _timers: list[Any]  # asyncio.TimerHandle heap (the base class's); their `_scheduled` is untyped
    _timer_cancelled_count: int  # cancelled timers still in the heap (asyncio's counter)

    # --- queueing (Trio thread) ----------------------------------------------------------------------
    # call_soon / call_at / call_later check their callback only in debug mode, as asyncio's loop does
    # (trio-asyncio's always do: inspect.iscoroutinefunction on every callback was ~0.3 ms a workflow).
    def call_soon(self, callback: Callable[..., object], *args: Any, context: Any = None) -> asyncio.Handle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon")
        handle = asyncio.Handle(callback, args, self, context)
        self._runnable.append(handle)
        if self._parked is not None:
            self._wake()
        return handle

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_at")
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        self._push_timer(timer)
        return timer

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def _queue_handle(self, handle: asyncio.Handle) -> asyncio.Handle:
        self._check_closed()
        if isinstance(handle, asyncio.TimerHandle):
            self._push_timer(handle)
        else:
            self._runnable.append(handle)
            self._wake()
        return handle

    def _push_timer(self, timer: Any) -> None:
        timer._scheduled = True  # so cancel() reports it (_timer_handle_cancelled), as in asyncio
        heapq.heappush(self._timers, timer)
        if self._parked is not None:
            scope = self._park_scope
            if scope is None:
                self._wake()  # parked without a deadline: park again with this one
            elif timer._when < scope.deadline:
                scope.deadline = timer._when

    def _timer_handle_cancelled(self, handle: Any) -> None:
        if handle._scheduled:
            self._timer_cancelled_count += 1

    def _wake(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    # --- queueing (any thread) -----------------------------------------------------------------------
    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = asyncio.Handle(callback, args, self, context)
        self._runnable.append(handle)  # deque.append is atomic
        if threading.get_ident() == self._trio_thread:
            self._wake()
        elif not self._wakeup_pending:
            # Cleared by _wake_from_thread BEFORE the loop takes the queue: a handle appended before
            # the flag is cleared is taken by that turn; one appended after sends a wake-up of its own.
            self._wakeup_pending = True
            self._token.run_sync_soon(self._wake_from_thread)
        return handle

    def _wake_from_thread(self) -> None:
        self._wakeup_pending = False
        self._wake()

    def _handle_sig(self, sig: int, _: object) -> None:
        # A signal handler interrupts whatever the Trio thread was doing: only run_sync_soon is safe here.
        self._runnable.append(self._signal_handlers[sig])
        self._token.run_sync_soon(self._wake_from_thread)

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        if executor is None or isinstance(executor, trio_asyncio.TrioExecutor):
            return super().run_in_executor(executor, func, *args)  # type: ignore[no-any-return]
        self._check_closed()
        if self._debug:
            self._check_callback(func, "run_in_executor")
        # asyncio's own way: the job's completion comes back through call_soon_threadsafe.
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)

    # --- the main loop's turn ------------------------------------------------------------------------
    async def _main_loop_one(self, no_wait: bool = False) -> None:
        """One turn: wait for work, then run batches as asyncio's iterations do (every callback ready when
        the batch began, every timer due), up to _BATCHES_PER_TURN while callbacks are ready, before
        Trio's other tasks get their turn. `no_wait` (the shutdown drain): one batch, no waiting;
        trio.WouldBlock when nothing was ready."""
        if not self._channel_drained:
            self._take_channel()
        if no_wait:
            if not await self._run_batch():
                raise trio.WouldBlock
            return
        if self._runnable:
            # One Trio scheduler pass per turn, not per callback (the loop task is shielded).
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._park()
        for _ in range(_BATCHES_PER_TURN):
            if not await self._run_batch() or not self._runnable:
                break

    def _take_channel(self) -> None:
        """Anything queued through trio-asyncio's own channel before the loop was adopted runs first."""
        early = []
        with contextlib.suppress(trio.WouldBlock):
            while True:
                early.append(self._q_recv.receive_nowait())
        for handle in reversed(early):
            if isinstance(handle, asyncio.TimerHandle):
                self._push_timer(handle)
            else:
                self._runnable.appendleft(handle)
        self._channel_drained = True

    def _next_deadline(self) -> float:
        """When the first live timer is due (inf: none); cancelled timers leave the heap first."""
        timers = self._timers
        if (
            len(timers) > _MIN_TIMERS_TO_COMPACT
            and self._timer_cancelled_count / len(timers) > _CANCELLED_FRACTION_TO_COMPACT
        ):
            live = []
            for timer in timers:
                if timer._cancelled:
                    timer._scheduled = False
                else:
                    live.append(timer)
            heapq.heapify(live)
            timers[:] = live
            self._timer_cancelled_count = 0
        while timers and timers[0]._cancelled:
            self._unschedule(heapq.heappop(timers))
        return timers[0]._when if timers else math.inf

    def _unschedule(self, timer: Any) -> None:
        if timer._cancelled and timer._scheduled:
            self._timer_cancelled_count -= 1
        timer._scheduled = False

    async def _park(self) -> None:
        """Wait until woken (a callback was queued) or the first live timer is due."""
        deadline = self._next_deadline()
        if deadline <= self.time():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        self._parked = trio.lowlevel.current_task()
        if deadline == math.inf:
            await trio.lowlevel.wait_task_rescheduled(abort)
            return
        with trio.CancelScope(deadline=deadline) as scope:
            self._park_scope = scope
            try:
                await trio.lowlevel.wait_task_rescheduled(abort)
            finally:
                self._park_scope = None

    async def _run_batch(self) -> bool:
        """Run the timers due and the callbacks ready now (not those they queue); whether any ran."""
        runnable = self._runnable
        timers = self._timers
        if timers:
            now = self.time()
            while timers and timers[0]._when <= now:
                timer = heapq.heappop(timers)
                self._unschedule(timer)
                if not timer._cancelled:
                    runnable.append(timer)
        count = len(runnable)
        if not count:
            return False
        previous, sniffio_library.name = sniffio_library.name, "asyncio"
        try:
            for _ in range(count):
                handle = runnable.popleft()
                if isinstance(handle, AsyncHandle):
                    # A Trio task (trio_as_future, a TrioExecutor job): started as trio-asyncio does.
                    sniffio_library.name = previous
                    handle._context.run(self._nursery.start_soon, handle._run, name=handle._callback)
                    await handle._started.wait()
                    sniffio_library.name = "asyncio"
                elif not handle._cancelled:
                    handle._run()
        finally:
            sniffio_library.name = previous
        return True


def _adopt(loop: trio_asyncio.TrioEventLoop) -> BatchedTrioEventLoop:
    """Re-class the loop `trio_asyncio.open_loop()` just opened. Its main-loop task is parked in the base
    class's turn (waiting on trio-asyncio's channel); one no-op callback sent there ends that turn, and
    every later turn is BatchedTrioEventLoop._main_loop_one (the task looks it up on each turn)."""
    if type(loop) is not trio_asyncio.TrioEventLoop:
        raise TypeError(f"expected trio-asyncio's TrioEventLoop, got {type(loop).__name__}")
    batched: BatchedTrioEventLoop = loop
    batched._runnable = deque()
    batched._parked = None
    batched._park_scope = None
    batched._wakeup_pending = False
    batched._trio_thread = threading.get_ident()
    batched._channel_drained = False
    batched._timer_cancelled_count = 0
    loop.__class__ = BatchedTrioEventLoop
    batched._q_send.send_nowait(asyncio.Handle(_nothing, (), batched))
    return batched


def _nothing() -> None:
    pass


@contextlib.asynccontextmanager
async def open_loop() -> AsyncIterator[BatchedTrioEventLoop]:
    """`trio_asyncio.open_loop()` with the batched queue; use it as that one (same semantics)."""
    async with trio_asyncio.open_loop() as loop:
        yield _adopt(loop)


class ThreadCacheExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each job in Trio's thread cache (`trio.lowlevel.start_thread_soon`: daemon threads, reused),
    with no Trio task per job: for code that never calls back into Trio (no `trio.from_thread` here),
    such as workflow activations. A ThreadPoolExecutor by type only (temporalio's Worker asks for one);
    none of its own threads ever start, and `shutdown` never waits: a stuck job cannot hold the Trio
    thread (a pool the SDK made itself would be joined at the Worker's end)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> T | None:
            if not future.set_running_or_notify_cancel():
                return None
            return fn(*args, **kwargs)

        def deliver(result: Any) -> None:  # an outcome.Outcome, in the worker thread
            if not future.running():
                return  # cancelled before it began
            try:
                value = result.unwrap()
            except BaseException as exc:  # as ThreadPoolExecutor's own jobs: the future carries it
                future.set_exception(exc)
            else:
                future.set_result(value)

        trio.lowlevel.start_thread_soon(job, deliver)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass
