"""The Trio supervision tree, in virtual time (autojump clock): exact times, no real I/O."""

from __future__ import annotations

import contextvars
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from stigmer_trio import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildSpec,
    ChildStarted,
    ChildState,
    ConfigError,
    Event,
    Restart,
    RestartLimitExceeded,
    RestartPolicy,
    Strategy,
    Supervisor,
)

# No jitter and no limit unless a test says otherwise, so times are exact.
STEADY = RestartPolicy(initial_delay=0.0, backoff=1.0, multiplier=2.0, max_delay=4.0, jitter=0.0,
                       max_restarts=None, window=100.0, reset_after=10.0)  # fmt: skip


class Boom(Exception):
    pass


@attrs.define
class Log:
    """Records what children do and which events the supervisor emits, stamped with trio time."""

    actions: list[tuple[float, str, str]] = attrs.Factory(list)
    events: list[Event] = attrs.Factory(list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def note(self, child: str, what: str) -> None:
        self.actions.append((trio.current_time(), child, what))

    def times(self, child: str, what: str) -> list[float]:
        return [t for t, c, w in self.actions if c == child and w == what]

    def order(self, what: str) -> list[str]:
        return [c for _, c, w in self.actions if w == what]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


ChildFn = Callable[..., Awaitable[object]]


def forever(log: Log, name: str, *, start_after: float = 0.0) -> ChildFn:
    """A child that starts (optionally slowly) and runs until cancelled, noting start and stop."""

    async def fn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.note(name, "spawn")
        await trio.sleep(start_after)
        log.note(name, "start")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            log.note(name, "stop")

    return fn


def crashes_at(log: Log, name: str, at: list[float], error: BaseException | None = None) -> ChildFn:
    """A child that starts, then raises `error` (or returns) after the next delay from `at`; then lives."""
    delays = list(at)

    async def fn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.note(name, "start")
        task_status.started()
        try:
            if delays:
                await trio.sleep(delays.pop(0))
                log.note(name, "crash")
                if error is not None:
                    raise error
                return
            await trio.sleep_forever()
        finally:
            log.note(name, "stop")

    return fn


def always_crashes(log: Log, name: str) -> ChildFn:
    async def fn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.note(name, "start")
        task_status.started()
        raise Boom(f"{name} failed at {trio.current_time():g}")

    return fn


async def serve_for(sup: Supervisor, seconds: float) -> None:
    """Run `sup` (started like a real caller would) for `seconds` of virtual time, then cancel it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel(reason="test over")


class TestBackoffAndLimit:
    async def test_schedule_and_limit_exact_times(self, autojump_clock: trio.testing.MockClock) -> None:
        """An always-crashing child starts at t = 0, 0, 1, 3, 7 and the limit is hit at t = 7."""
        log = Log()
        policy = RestartPolicy(initial_delay=0, backoff=1, multiplier=2, max_delay=4, jitter=0,
                               max_restarts=4, window=100)  # fmt: skip
        sup = Supervisor([ChildSpec("c", always_crashes(log, "c"))], policy=policy, on_event=log)
        with pytest.raises(RestartLimitExceeded) as info:
            await sup.serve()
        assert [0, 0, 1, 3, 7] == log.times("c", "start")
        assert 7 == trio.current_time()
        error = info.value
        assert "c" == error.child
        assert isinstance(error.__cause__, Boom)
        assert "c failed at 7" == str(error.__cause__)
        assert [0, 0, 1, 3] == [r.at for r in error.history]
        assert [1, 2, 3, 4] == [r.attempt for r in error.history]
        assert [0, 1, 2, 4] == [r.delay for r in error.history]
        assert 4 == error.restarts
        assert "gave up on child 'c' after 4 restarts within 100 s" in str(error)
        assert [error] == log.of(RestartLimitExceeded)
        assert log.events[-1] is error

    async def test_limit_stops_every_child_in_reverse_order_first(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Before raising RestartLimitExceeded the other children are stopped, last started first."""
        log = Log()
        policy = attrs.evolve(STEADY, max_restarts=1)
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")), ChildSpec("b", always_crashes(log, "b")),
             ChildSpec("c", forever(log, "c"))],
            policy=policy,
        )  # fmt: skip
        with pytest.raises(RestartLimitExceeded):
            await sup.serve()
        assert ["c", "a"] == log.order("stop")
        assert all(s.state is ChildState.STOPPED for s in sup.snapshot())

    async def test_limit_raised_from_nursery_start_when_start_never_succeeds(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that fails before started() makes nursery.start(sup.serve) raise after the limit."""

        async def never_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await trio.sleep(0.5)
            raise Boom("port in use")

        sup = Supervisor([ChildSpec("srv", never_ready)], policy=attrs.evolve(STEADY, max_restarts=2))
        async with trio.open_nursery() as nursery:
            with pytest.raises(RestartLimitExceeded) as info:
                await nursery.start(sup.serve)
        assert "port in use" == str(info.value.__cause__)
        # spawn at 0, fail 0.5; restart at 0.5 fails 1.0; restart at 2.0 fails 2.5 -> limit
        assert 2.5 == trio.current_time()

    async def test_intensity_counts_all_children(self, autojump_clock: trio.testing.MockClock) -> None:
        """The supervisor's max_restarts counts restarts of every child together (OTP intensity)."""
        log = Log()
        policy = attrs.evolve(STEADY, max_restarts=3, backoff=10.0, max_delay=10.0)
        sup = Supervisor(
            [ChildSpec("a", crashes_at(log, "a", [1, 1], Boom())),
             ChildSpec("b", crashes_at(log, "b", [2.5, 2], Boom()))],
            policy=policy,
        )  # fmt: skip
        with pytest.raises(RestartLimitExceeded) as info:
            await sup.serve()
        # a crashes at 1 (restarted at 1), a at 2 (due at 12), b at 2.5 (restarted at 2.5), b at 4.5: 4th
        assert "b" == info.value.child
        assert ["a", "a", "b"] == [r.child for r in info.value.history]
        assert 4.5 == trio.current_time()

    async def test_child_policy_sets_its_backoff_and_own_limit(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child's own policy gives its delays and a restart limit of its own."""
        log = Log()
        own = RestartPolicy(initial_delay=5.0, backoff=0.5, multiplier=3.0, max_delay=100.0, jitter=0.0,
                            max_restarts=2, window=100.0)  # fmt: skip
        sup = Supervisor([ChildSpec("c", always_crashes(log, "c"), policy=own)], policy=STEADY)
        with pytest.raises(RestartLimitExceeded) as info:
            await sup.serve()
        assert [0, 5, 5.5] == log.times("c", "start")
        assert 2 == info.value.restarts

    async def test_window_slides_so_rare_crashes_go_on_forever(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Crashes further apart than the window never hit the limit."""
        log = Log()
        policy = attrs.evolve(STEADY, max_restarts=1, window=50.0)
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [60.0] * 10, Boom()))], policy=policy)
        await serve_for(sup, 650.0)
        assert 11 == len(log.times("c", "start"))

    async def test_reset_after_stable_run(self, autojump_clock: trio.testing.MockClock) -> None:
        """After a run of at least reset_after seconds the next restart is attempt 1 (initial_delay)."""
        log = Log()
        policy = attrs.evolve(STEADY, initial_delay=0.25)
        # runs of 1 s escalate; a 10 s run resets; then 1 s runs escalate again
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1, 1, 1, 10, 1], Boom()))], policy=policy,
                         on_event=log)  # fmt: skip
        await serve_for(sup, 100.0)
        scheduled = log.of(ChildRestartScheduled)
        assert [1, 2, 3, 1, 2] == [e.attempt for e in scheduled]
        assert [0.25, 1.0, 2.0, 0.25, 1.0] == [e.delay for e in scheduled]

    async def test_stable_counts_from_ready_not_from_spawn(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """reset_after is time spent ready: a slow boot that then dies soon, or a boot that never
        becomes ready however long it tries, keeps escalating; ready for reset_after resets."""
        log = Log()
        # (boot seconds, then ready seconds or None = fail during boot)
        runs: list[tuple[float, float | None]] = [(12, 1), (20, None), (1, 10), (12, 9.5), (0, None)]

        async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            boot, ready = runs.pop(0) if runs else (0.0, math.inf)
            await trio.sleep(boot)
            if ready is None:
                raise Boom("never ready")
            task_status.started()
            await trio.sleep(ready)
            raise Boom("died")

        sup = Supervisor([ChildSpec("c", child)], policy=attrs.evolve(STEADY, initial_delay=0.25),
                         on_event=log)  # fmt: skip
        await serve_for(sup, 200.0)
        # ready 1 s: 1; never ready (20 s): 2; ready 10 s: reset to 1; ready 9.5 s after a 12 s boot: 2;
        # failed at once: 3
        assert [1, 2, 1, 2, 3] == [e.attempt for e in log.of(ChildRestartScheduled)]

    async def test_jitter_comes_from_the_given_rng(self, autojump_clock: trio.testing.MockClock) -> None:
        """Delays are jittered with the supervisor's rng, reproducibly."""
        log = Log()
        policy = attrs.evolve(STEADY, jitter=0.5)
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1, 1, 1], Boom()))], policy=policy,
                         rng=random.Random(42), on_event=log)  # fmt: skip
        await serve_for(sup, 100.0)
        rng = random.Random(42)
        expected = [policy.delay(k, rng) for k in (1, 2, 3)]
        assert expected == [e.delay for e in log.of(ChildRestartScheduled)]


class TestStrategies:
    async def test_one_for_one_restarts_only_the_failed_child(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ONE_FOR_ONE: siblings keep running untouched."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")), ChildSpec("b", crashes_at(log, "b", [1], Boom())),
             ChildSpec("c", forever(log, "c"))],
            policy=STEADY,
        )  # fmt: skip
        await serve_for(sup, 5)
        assert [[0], [0, 1], [0]] == [log.times(n, "start") for n in "abc"]
        assert [("b", 1), ("c", 5), ("b", 5), ("a", 5)] == [(c, t) for t, c, w in log.actions if w == "stop"]

    async def test_one_for_all_stops_all_in_reverse_then_starts_all_in_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ONE_FOR_ALL: every sibling is stopped last-first, then all start again in order."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")), ChildSpec("b", crashes_at(log, "b", [1], Boom())),
             ChildSpec("c", forever(log, "c")), ChildSpec("d", forever(log, "d"))],
            strategy=Strategy.ONE_FOR_ALL, policy=STEADY, on_event=log,
        )  # fmt: skip
        await serve_for(sup, 5)
        during = [(c, w) for t, c, w in log.actions if t == 1 and w != "spawn"]
        assert [("b", "crash"), ("b", "stop"), ("d", "stop"), ("c", "stop"), ("a", "stop"),
                ("a", "start"), ("b", "start"), ("c", "start"), ("d", "start")] == during  # fmt: skip
        assert {"a", "b", "c", "d"} == {e.name for e in log.of(ChildRestartScheduled)}
        assert {"b"} == {e.cause for e in log.of(ChildRestartScheduled)}

    async def test_rest_for_one_restarts_the_failed_child_and_those_after_it(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """REST_FOR_ONE: children started before the failed one keep running."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")), ChildSpec("b", crashes_at(log, "b", [1], Boom())),
             ChildSpec("c", forever(log, "c")), ChildSpec("d", forever(log, "d"))],
            strategy=Strategy.REST_FOR_ONE, policy=STEADY,
        )  # fmt: skip
        await serve_for(sup, 5)
        during = [(c, w) for t, c, w in log.actions if t == 1 and w != "spawn"]
        assert [("b", "crash"), ("b", "stop"), ("d", "stop"), ("c", "stop"),
                ("b", "start"), ("c", "start"), ("d", "start")] == during  # fmt: skip
        assert [0] == log.times("a", "start")

    async def test_restart_group_waits_for_the_delay_then_starts_in_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The restarted group starts after the failed child's delay, strictly in spec order."""
        log = Log()
        policy = attrs.evolve(STEADY, initial_delay=2.0)
        sup = Supervisor(
            [ChildSpec("a", crashes_at(log, "a", [1], Boom())),
             ChildSpec("b", forever(log, "b", start_after=0.5))],
            strategy=Strategy.REST_FOR_ONE, policy=policy,
        )  # fmt: skip
        await serve_for(sup, 10)
        assert [0, 3] == log.times("a", "start")
        assert [0.5, 3.5] == log.times("b", "start")

    async def test_one_for_one_delay_of_one_child_does_not_hold_back_another(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ONE_FOR_ONE: a child waiting out a long backoff does not delay another child's restart."""
        log = Log()
        slow = attrs.evolve(STEADY, initial_delay=50.0)
        sup = Supervisor(
            [ChildSpec("a", crashes_at(log, "a", [1], Boom()), policy=slow),
             ChildSpec("b", crashes_at(log, "b", [2], Boom()))],
            policy=STEADY,
        )  # fmt: skip
        await serve_for(sup, 100)
        assert [0, 51] == log.times("a", "start")
        assert [0, 2] == log.times("b", "start")


class TestRestartTypes:
    async def test_permanent_is_restarted_after_a_normal_return(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """PERMANENT: a normal return is restarted and counted, never silently dropped."""
        log = Log()
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1]))], policy=STEADY, on_event=log)
        await serve_for(sup, 5)
        assert [0, 1] == log.times("c", "start")
        assert 1 == len(sup.history)
        assert [None] == [e.error for e in log.of(ChildExited) if not e.stopped]

    async def test_transient_normal_return_is_not_restarted(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """TRANSIENT: a normal return ends the child for good."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("c", crashes_at(log, "c", [1]), restart=Restart.TRANSIENT)], policy=STEADY
        )
        await serve_for(sup, 5)
        assert [0] == log.times("c", "start")
        assert ChildState.STOPPED == sup.snapshot()[0].state

    async def test_transient_failure_is_restarted(self, autojump_clock: trio.testing.MockClock) -> None:
        """TRANSIENT: an exception is restarted."""
        log = Log()
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1], Boom()), restart=Restart.TRANSIENT)],
                         policy=STEADY)  # fmt: skip
        await serve_for(sup, 5)
        assert [0, 1] == log.times("c", "start")

    async def test_temporary_is_never_restarted(self, autojump_clock: trio.testing.MockClock) -> None:
        """TEMPORARY: not even after an exception."""
        log = Log()
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1], Boom()), restart=Restart.TEMPORARY)],
                         policy=STEADY)  # fmt: skip
        await serve_for(sup, 5)
        assert [0] == log.times("c", "start")
        assert "Boom" == sup.snapshot()[0].last_error

    async def test_temporary_sibling_stopped_by_one_for_all_stays_stopped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A temporary child stopped for a sibling's restart is not started again."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("t", forever(log, "t"), restart=Restart.TEMPORARY),
             ChildSpec("b", crashes_at(log, "b", [1], Boom()))],
            strategy=Strategy.ONE_FOR_ALL, policy=STEADY,
        )  # fmt: skip
        await serve_for(sup, 5)
        assert [0] == log.times("t", "start")
        assert [0, 1] == log.times("b", "start")
        assert [ChildState.STOPPED, ChildState.STOPPED] == [s.state for s in sup.snapshot()]


class TestStartup:
    async def test_start_returns_once_every_child_started_in_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """nursery.start(sup.serve) returns after the last child called started(); starts are sequential."""
        log = Log()
        sup = Supervisor([ChildSpec(n, forever(log, n, start_after=1.0)) for n in "abc"], policy=STEADY)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.serve)
            assert 3 == trio.current_time()
            assert [(0, "a"), (1, "b"), (2, "c")] == [(t, c) for t, c, w in log.actions if w == "spawn"]
            assert [ChildState.RUNNING] * 3 == [s.state for s in sup.snapshot()]
            nursery.cancel_scope.cancel()

    async def test_start_failure_is_retried_and_later_children_wait(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child failing before started() is restarted by policy; children after it start only then."""
        log = Log()
        failures = [Boom("not yet"), Boom("not yet")]

        async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            log.note("a", "spawn")
            if failures:
                raise failures.pop()
            task_status.started()
            await trio.sleep_forever()

        sup = Supervisor([ChildSpec("a", flaky), ChildSpec("b", forever(log, "b"))], policy=STEADY)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.serve)
            assert [0, 0, 1] == log.times("a", "spawn")
            assert [1] == log.times("b", "start")
            nursery.cancel_scope.cancel()

    async def test_returning_without_started_is_a_failure(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that returns before calling started() failed, like trio's nursery.start says."""
        log = Log()

        async def lazy(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            return

        sup = Supervisor([ChildSpec("c", lazy, restart=Restart.TRANSIENT)],
                         policy=attrs.evolve(STEADY, max_restarts=0),
                         on_event=log)  # fmt: skip
        with pytest.raises(RestartLimitExceeded) as info:
            await sup.serve()
        assert "returned without calling task_status.started()" in str(info.value.__cause__)

    async def test_started_value_is_reported(self, autojump_clock: trio.testing.MockClock) -> None:
        """The value a child passes to started() is in its ChildStarted event."""
        log = Log()

        async def ready(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started("127.0.0.1:7233")
            await trio.sleep_forever()

        await serve_for(Supervisor([ChildSpec("srv", ready)], policy=STEADY, on_event=log), 1)
        assert [ChildStarted("srv", "supervisor", 0, "127.0.0.1:7233")] == log.of(ChildStarted)

    async def test_children_see_the_callers_context(self, autojump_clock: trio.testing.MockClock) -> None:
        """Context variables set by the caller are visible in children (e.g. trio-asyncio's loop)."""
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
        seen: list[str] = []

        async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            seen.append(var.get())
            task_status.started()
            await trio.sleep_forever()

        var.set("from caller")
        await serve_for(Supervisor([ChildSpec("c", child)]), 1)
        assert ["from caller"] == seen

    async def test_serve_twice_at_once_is_refused(self, autojump_clock: trio.testing.MockClock) -> None:
        """One supervisor serves one tree at a time."""
        sup = Supervisor([ChildSpec("c", forever(Log(), "c"))])
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.serve)
            with pytest.raises(RuntimeError, match="already serving"):
                await sup.serve()
            nursery.cancel_scope.cancel()

    async def test_no_children_is_fine(self, autojump_clock: trio.testing.MockClock) -> None:
        """An empty supervisor starts at once and serves until cancelled."""
        await serve_for(Supervisor([]), 1)
        assert 1 == trio.current_time()


class TestShutdown:
    async def test_cancel_stops_children_in_reverse_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Cancelling serve stops the children last-started first, and restarts nothing."""
        log = Log()
        sup = Supervisor([ChildSpec(n, forever(log, n)) for n in "abc"], policy=STEADY, on_event=log)
        await serve_for(sup, 3)
        assert ["c", "b", "a"] == log.order("stop")
        assert [] == log.of(ChildRestartScheduled)
        assert [("c", True), ("b", True), ("a", True)] == [(e.name, e.stopped) for e in log.of(ChildExited)]
        assert [None, None, None] == [e.error for e in log.of(ChildExited)]

    async def test_each_child_gets_its_shutdown_timeout_for_cleanup(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child's shielded cleanup runs to its end when it fits within shutdown_timeout."""
        log = Log()

        async def tidy(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(2)
                log.note("tidy", "cleaned")

        sup = Supervisor([ChildSpec("tidy", tidy, shutdown_timeout=3)], policy=STEADY)
        await serve_for(sup, 1)
        assert [3] == log.times("tidy", "cleaned")
        assert 3 == trio.current_time()

    async def test_child_ignoring_cancellation_is_abandoned(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that overstays its shutdown_timeout is abandoned and reported; the rest still stop."""
        log = Log()

        async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1000)

        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")), ChildSpec("stubborn", stubborn, shutdown_timeout=2)],
            policy=STEADY, on_event=log,
        )  # fmt: skip
        await serve_for(sup, 5)
        assert 7 == trio.current_time()
        assert [ChildAbandoned("stubborn", "supervisor", 2)] == log.of(ChildAbandoned)
        assert [7] == log.times("a", "stop")
        assert [ChildState.STOPPED, ChildState.ABANDONED] == [s.state for s in sup.snapshot()]

    async def test_shutdown_timeout_bounds_the_whole_stop(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Supervisor(shutdown_timeout=3): the stop of all children ends 3 s after the cancellation; a
        child gets the smaller of its own budget and what is left, and is abandoned past it."""
        log = Log()

        def slow_stop(name: str, cleanup: float) -> ChildFn:
            async def fn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):  # a cleanup that ignores cancellation
                        await trio.sleep(cleanup)
                        log.note(name, "cleaned")

            return fn

        sup = Supervisor(
            [ChildSpec("a", slow_stop("a", 6), shutdown_timeout=10),
             ChildSpec("b", slow_stop("b", 2), shutdown_timeout=10)],
            policy=STEADY, on_event=log, shutdown_timeout=3,
        )  # fmt: skip
        await serve_for(sup, 5)
        assert 8 == trio.current_time()
        assert [7] == log.times("b", "cleaned")  # stopped in reverse order: b first, within budget
        assert [ChildAbandoned("a", "supervisor", 1.0)] == log.of(ChildAbandoned)
        assert [ChildState.ABANDONED, ChildState.STOPPED] == [s.state for s in sup.snapshot()]

    def test_shutdown_timeout_is_validated(self) -> None:
        """A negative or infinite shutdown_timeout is a ConfigError naming it."""
        for bad in (-1, math.inf):
            with pytest.raises(ConfigError, match="shutdown_timeout"):
                Supervisor([], shutdown_timeout=bad)

    async def test_keyboard_interrupt_is_never_retried(self, autojump_clock: trio.testing.MockClock) -> None:
        """A child raising KeyboardInterrupt stops the others and the interrupt propagates."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")),
             ChildSpec("k", crashes_at(log, "k", [1], KeyboardInterrupt()))],
            policy=STEADY, on_event=log,
        )  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            await sup.serve()
        assert [0] == log.times("k", "start")
        assert [1] == log.times("a", "stop")
        assert [] == log.of(ChildRestartScheduled)

    async def test_other_base_exceptions_propagate(self, autojump_clock: trio.testing.MockClock) -> None:
        """SystemExit (any non-Exception) is never restarted either."""
        log = Log()
        sup = Supervisor([ChildSpec("x", crashes_at(log, "x", [1], SystemExit(3)))], policy=STEADY)
        with pytest.raises(SystemExit):
            await sup.serve()
        assert [0] == log.times("x", "start")

    async def test_cancelled_while_child_is_starting(self, autojump_clock: trio.testing.MockClock) -> None:
        """Cancelling during a slow start stops the half-started child too."""
        log = Log()
        sup = Supervisor([ChildSpec("slow", forever(log, "slow", start_after=10))], policy=STEADY)
        with trio.move_on_after(2):
            await sup.serve()
        assert 2 == trio.current_time()
        assert [] == log.times("slow", "start")
        assert ChildState.STOPPED == sup.snapshot()[0].state

    async def test_cancel_during_backoff_starts_nothing(self, autojump_clock: trio.testing.MockClock) -> None:
        """A restart waiting out its delay is dropped when the supervisor is cancelled."""
        log = Log()
        policy = attrs.evolve(STEADY, initial_delay=100.0)
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1], Boom()))], policy=policy)
        await serve_for(sup, 5)
        assert [0] == log.times("c", "start")
        assert 5 == trio.current_time()

    async def test_serve_can_run_again_after_stopping(self, autojump_clock: trio.testing.MockClock) -> None:
        """A stopped supervisor can serve again from scratch."""
        log = Log()
        sup = Supervisor([ChildSpec("c", forever(log, "c"))], policy=STEADY)
        await serve_for(sup, 1)
        await serve_for(sup, 1)
        assert [0, 1] == log.times("c", "start")


class TestObservability:
    async def test_event_sequence_for_a_crash(self, autojump_clock: trio.testing.MockClock) -> None:
        """A crash emits ChildExited then ChildRestartScheduled then ChildStarted."""
        log = Log()
        error = Boom("bad")
        sup = Supervisor([ChildSpec("c", crashes_at(log, "c", [1.5], error))], policy=STEADY, on_event=log)
        await serve_for(sup, 3)
        assert [
            ChildStarted("c", "supervisor", 0),
            ChildExited("c", "supervisor", error, 1.5),
            ChildRestartScheduled("c", "supervisor", 1, 0.0, "c"),
            ChildStarted("c", "supervisor", 1),
            ChildExited("c", "supervisor", None, 1.5, stopped=True),
        ] == log.events

    async def test_snapshot(self, autojump_clock: trio.testing.MockClock) -> None:
        """The snapshot shows state, restart count and last error of each child."""
        log = Log()
        sup = Supervisor(
            [ChildSpec("a", forever(log, "a")),
             ChildSpec("b", crashes_at(log, "b", [1, 1], Boom("disk full")))],
            policy=STEADY,
        )  # fmt: skip
        assert [ChildState.PENDING, ChildState.PENDING] == [s.state for s in sup.snapshot()]
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.serve)
            await trio.sleep(5)
            a, b = sup.snapshot()
            assert (ChildState.RUNNING, 0, None) == (a.state, a.restarts, a.last_error)
            assert (ChildState.RUNNING, 2, "Boom: disk full") == (b.state, b.restarts, b.last_error)
            nursery.cancel_scope.cancel()

    async def test_failing_event_hook_does_not_break_supervision(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An event hook that raises is logged; restarts go on."""
        log = Log()

        def bad_hook(event: Event) -> None:
            raise RuntimeError("hook bug")

        sup = Supervisor(
            [ChildSpec("c", crashes_at(log, "c", [1], Boom()))], policy=STEADY, on_event=bad_hook
        )
        with caplog.at_level(logging.ERROR, logger="stigmer_trio.supervisor"):
            await serve_for(sup, 3)
        assert [0, 1] == log.times("c", "start")
        assert any("hook bug" in (r.exc_text or "") for r in caplog.records)


class TestSpecValidation:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"name": ""}, "name"),
            ({"name": 3}, "name"),
            ({"fn": "not callable"}, "fn"),
            ({"restart": "permanent"}, "restart"),
            ({"policy": {"backoff": 1}}, "policy"),
            ({"shutdown_timeout": -1}, "shutdown_timeout"),
            ({"shutdown_timeout": math.inf}, "shutdown_timeout"),
        ],
    )
    def test_bad_child_spec(self, kwargs: dict[str, Any], field: str) -> None:
        """A bad ChildSpec field raises ConfigError naming it."""
        args: dict[str, Any] = {"name": "c", "fn": forever(Log(), "c")} | kwargs
        with pytest.raises(ConfigError, match=field):
            ChildSpec(**args)

    def test_duplicate_child_names(self) -> None:
        """Child names are unique within a supervisor."""
        fn = forever(Log(), "c")
        with pytest.raises(ConfigError, match="duplicate child name 'c'"):
            Supervisor([ChildSpec("c", fn), ChildSpec("c", fn)])

    @pytest.mark.parametrize(
        "kwargs", [{"strategy": "one_for_one"}, {"policy": 5}, {"name": ""}, {"children": [object()]}]
    )
    def test_bad_supervisor_arguments(self, kwargs: dict[str, Any]) -> None:
        """A bad Supervisor argument raises ConfigError."""
        children = kwargs.pop("children", [])
        with pytest.raises(ConfigError):
            Supervisor(children, **kwargs)
