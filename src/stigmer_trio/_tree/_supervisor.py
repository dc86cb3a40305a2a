# A generic Trio supervision tree (Erlang/OTP semantics with backoff). Rule: all restart logic of the
# runtime lives here; a child is one lifetime and never loops on its own failures. The policy
# arithmetic is pure (_core/_policy.py); this module owns the clock, the tasks and the cancel scopes.
#
# Children run as trio system tasks with the caller's contextvars, not in a nursery of ours: a nursery
# must wait for every task in it, so a child that ignores cancellation would make the supervisor wait
# forever. Running them outside lets the supervisor abandon such a child after its shutdown_timeout
# (and report it) while still owning every exit through its own channel: nothing a child raises ever
# escapes into trio's system nursery.
from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

import attrs
import trio

from .._core._errors import ConfigError
from .._core._events import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    Event,
    EventHook,
    RestartLimitExceeded,
    RestartRecord,
)
from .._core._policy import RestartHistory, RestartPolicy, next_attempt

__all__ = ["ChildSpec", "ChildState", "ChildStatus", "Restart", "Strategy", "Supervisor"]

logger = logging.getLogger("stigmer_trio.supervisor")


class Strategy(enum.Enum):
    """Which children are restarted when one exits and must be restarted."""

    ONE_FOR_ONE = "one_for_one"  # only that child
    ONE_FOR_ALL = "one_for_all"  # every child: stop all in reverse order, start all in order
    REST_FOR_ONE = "rest_for_one"  # that child and every child after it in the spec list


class Restart(enum.Enum):
    """When a child that exited on its own is restarted."""

    PERMANENT = "permanent"  # always, also after a normal return
    TRANSIENT = "transient"  # only when it raised
    TEMPORARY = "temporary"  # never


class ChildState(enum.Enum):
    PENDING = "pending"  # waiting to be started (first start or a scheduled restart)
    STARTING = "starting"  # spawned, has not called task_status.started() yet
    RUNNING = "running"
    STOPPING = "stopping"  # cancelled by the supervisor, within its shutdown_timeout
    STOPPED = "stopped"  # not running and not going to be restarted
    ABANDONED = "abandoned"  # overstayed its shutdown_timeout; still running, nobody waits for it


def _name(instance: object, attribute: attrs.Attribute[str], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _callable(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ConfigError(f"{attribute.name} must be an async function, got {value!r}")


def _timeout(instance: object, attribute: attrs.Attribute[float], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _enum(kind: type[enum.Enum]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind):
            raise ConfigError(f"{attribute.name} must be a {kind.__name__}, got {value!r}")

    return check


def _optional_policy(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, RestartPolicy):
        raise ConfigError(f"{attribute.name} must be a RestartPolicy or None, got {value!r}")


@attrs.frozen
class ChildSpec:
    """One supervised child.

    `fn` is ``async def fn(*, task_status=trio.TASK_STATUS_IGNORED)``: it calls
    ``task_status.started()`` once it is really ready, then runs until its thing dies. `policy`
    overrides the supervisor's backoff (and adds a restart limit of its own) for this child.
    """

    name: str = attrs.field(validator=_name)
    fn: Callable[..., Awaitable[object]] = attrs.field(validator=_callable)
    restart: Restart = attrs.field(default=Restart.PERMANENT, kw_only=True, validator=_enum(Restart))
    policy: RestartPolicy | None = attrs.field(default=None, kw_only=True, validator=_optional_policy)
    shutdown_timeout: float = attrs.field(default=5.0, kw_only=True, validator=_timeout)


@attrs.frozen
class ChildStatus:
    """A snapshot of one child: its state, how often it was restarted and why it last failed."""

    name: str
    state: ChildState
    restarts: int
    last_error: str | None


def describe_error(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _StartStatus:
    """The task_status handed to a child: records readiness instead of moving tasks between nurseries."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    def started(self, value: object = None) -> None:
        run = self._run
        if run.started:
            raise RuntimeError("called 'started' twice on the same task status")
        run.started = True
        run.started_at = trio.current_time()
        run.value = value
        run.settled.set()


@attrs.define(eq=False)
class _Run:
    """One lifetime of a child."""

    child: _Child
    spawned_at: float
    report: trio.MemorySendChannel[_Run]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    settled: trio.Event = attrs.field(factory=trio.Event)  # started() was called, or it finished
    finished: trio.Event = attrs.field(factory=trio.Event)
    started: bool = False
    value: object = None
    error: BaseException | None = None
    started_at: float = math.nan  # when it called task_status.started(): ready
    finished_at: float = math.nan
    stopping: bool = False  # the supervisor cancelled it: its exit is not a failure
    handled: bool = False  # its exit has been acted on


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    index: int
    policy: RestartPolicy
    history: RestartHistory
    state: ChildState = ChildState.PENDING
    run: _Run | None = None
    due: float = -math.inf  # when PENDING: the earliest time it may start
    group: int = 0  # children pending in one group start strictly in spec order
    attempt: int = 0  # attempt number of the restart that started the current run
    restarts: int = 0
    last_error: BaseException | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class Supervisor:
    """Starts children in order, restarts them by policy and strategy, stops them in reverse order.

    ``await nursery.start(sup.serve)`` returns once every child has started. Intensity (OTP): the
    supervisor's `policy` allows at most ``max_restarts`` restarts of all its children together within
    ``window`` seconds; past that it stops every child and raises `RestartLimitExceeded`. Only
    `Exception` is ever restarted: any other BaseException a child raises stops the others and
    propagates. Cancelling `serve` stops the children in reverse order, each within its
    ``shutdown_timeout``; one that overstays is abandoned and reported (`ChildAbandoned`): nobody waits
    for it any more, its own cleanup goes on in the background.

    `shutdown_timeout` (None: no bound but the children's own) bounds the whole stop, when `serve` is
    cancelled or gives up: each child then gets the smaller of its own budget and what is left of this
    one, so `serve` returns within `shutdown_timeout` seconds of its cancellation whatever the children
    do. The constructor raises ConfigError for a bad argument (duplicate child names included).
    """

    def __init__(
        self,
        children: Iterable[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        policy: RestartPolicy | None = None,
        name: str = "supervisor",
        on_event: EventHook | None = None,
        rng: random.Random | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        specs = tuple(children)
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise ConfigError(f"children must be ChildSpec instances, got {spec!r}")
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise ConfigError(f"children: duplicate child name {spec.name!r}")
            seen.add(spec.name)
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategy must be a Strategy, got {strategy!r}")
        if policy is None:
            policy = RestartPolicy()
        elif not isinstance(policy, RestartPolicy):
            raise ConfigError(f"policy must be a RestartPolicy, got {policy!r}")
        _name(None, attrs.fields(ChildSpec).name, name)
        if shutdown_timeout is not None:
            _timeout(None, attrs.fields(ChildSpec).shutdown_timeout, shutdown_timeout)
        self._shutdown_timeout = math.inf if shutdown_timeout is None else float(shutdown_timeout)
        self._specs = specs
        self._strategy = strategy
        self._policy = policy
        self._name = name
        self._on_event = on_event
        self._rng = rng if rng is not None else random.Random()
        self._serving = False
        self._children = self._fresh_children()
        self._history = RestartHistory(policy)
        self._groups = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def policy(self) -> RestartPolicy:
        return self._policy

    @property
    def children(self) -> tuple[ChildSpec, ...]:
        return self._specs

    @property
    def history(self) -> tuple[RestartRecord, ...]:
        """The restarts that still count against the supervisor's intensity window."""
        records: tuple[RestartRecord, ...] = self._history.records
        return records

    def snapshot(self) -> tuple[ChildStatus, ...]:
        """Each child's state, restart count and last error, in spec order. Never blocks."""
        return tuple(
            ChildStatus(c.name, c.state, c.restarts, describe_error(c.last_error)) for c in self._children
        )

    def _fresh_children(self) -> list[_Child]:
        return [
            _Child(
                spec=spec,
                index=index,
                policy=spec.policy or self._policy,
                history=RestartHistory(spec.policy or self._policy),
            )
            for index, spec in enumerate(self._specs)
        ]

    def _emit(self, event: Event) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            logger.exception("event hook of supervisor %r failed on %r", self._name, event)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Run the children until cancelled; `task_status.started()` once every child is running.

        Never returns: it raises RestartLimitExceeded when a restart limit is exceeded (after stopping
        every child), re-raises any non-Exception a child raised (KeyboardInterrupt, SystemExit), and
        on cancellation stops every child in reverse order (shielded, bounded by the children's budgets
        and `shutdown_timeout`) before the Cancelled propagates. RuntimeError if already serving."""
        if self._serving:
            raise RuntimeError(f"supervisor {self._name!r} is already serving")
        self._serving = True
        self._children = self._fresh_children()
        self._history = RestartHistory(self._policy)
        send, receive = trio.open_memory_channel[_Run](math.inf)
        reported = False
        try:
            with receive:
                while True:
                    failed = await self._start_due_children(send)
                    if failed is None:
                        if not reported and self._all_up():
                            task_status.started()
                            reported = True
                        failed = await self._next_exit(receive)
                    if failed is not None:
                        await self._handle_exit(failed)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_all("supervisor stopping")
            send.close()
            self._serving = False

    def _all_up(self) -> bool:
        return all(c.state in (ChildState.RUNNING, ChildState.STOPPED) for c in self._children)

    async def _start_due_children(self, send: trio.MemorySendChannel[_Run]) -> _Run | None:
        """Start every pending child whose time has come, in spec order; return a run that failed to start."""
        blocked: set[int] = set()
        for child in self._children:
            if child.state is not ChildState.PENDING or child.group in blocked:
                continue
            if child.due > trio.current_time():
                blocked.add(child.group)  # later children of its group start after it
                continue
            run = await self._start(child, send)
            if not run.started:
                return run
        return None

    async def _start(self, child: _Child, send: trio.MemorySendChannel[_Run]) -> _Run:
        run = _Run(child=child, spawned_at=trio.current_time(), report=send)
        child.run = run
        child.state = ChildState.STARTING
        trio.lowlevel.spawn_system_task(
            self._child_main,
            run,
            name=f"{self._name}/{child.name}",
            context=contextvars.copy_context(),
        )
        await run.settled.wait()
        if run.started:
            child.state = ChildState.RUNNING
            self._emit(ChildStarted(child.name, self._name, child.restarts, run.value))
        return run

    @staticmethod
    async def _child_main(run: _Run) -> None:
        """The system task of one run. Nothing escapes it but trio's own end-of-run cancellation."""
        try:
            with run.scope:
                await run.child.spec.fn(task_status=_StartStatus(run))
        except BaseException as exc:
            run.error = exc
        if run.error is None and not run.started and not run.scope.cancelled_caught:
            run.error = RuntimeError(
                f"child {run.child.name!r} returned without calling task_status.started()"
            )
        run.finished_at = trio.current_time()
        run.finished.set()
        run.settled.set()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            run.report.send_nowait(run)  # fails only when the supervisor is gone (an abandoned run)
        if isinstance(run.error, trio.Cancelled) and not run.scope.cancel_called:
            raise run.error  # trio is cancelling its system tasks: let it

    async def _next_exit(self, receive: trio.MemoryReceiveChannel[_Run]) -> _Run | None:
        """The next exit to act on, or None when a pending child's start time comes first."""
        due = min((c.due for c in self._children if c.state is ChildState.PENDING), default=math.inf)
        with trio.move_on_at(due):
            while True:
                run = await receive.receive()
                if run is run.child.run and not run.stopping and not run.handled:
                    return run
        return None

    async def _handle_exit(self, run: _Run) -> None:
        run.handled = True
        child = run.child
        error = run.error
        ran_for = run.finished_at - run.spawned_at
        child.run = None
        child.state = ChildState.STOPPED
        if error is not None:
            child.last_error = error
        self._emit(ChildExited(child.name, self._name, error, ran_for))
        if error is not None and not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, SystemExit, Cancelled, ...: never retried
        if child.spec.restart is Restart.TEMPORARY or (
            child.spec.restart is Restart.TRANSIENT and error is None
        ):
            return
        now = trio.current_time()
        if not self._history.allows(now) or (child.spec.policy is not None and not child.history.allows(now)):
            await self._give_up(child, error, now)
        # Stable = ready for reset_after seconds: a child that never became ready never was, however
        # long it tried (a boot that fails slowly is still a crash loop).
        ready_for = run.finished_at - run.started_at if run.started else 0.0
        attempt = next_attempt(child.attempt, ready_for, child.policy)
        delay = child.policy.delay(attempt, self._rng)
        record = RestartRecord(child=child.name, at=now, attempt=attempt, delay=delay)
        self._history = self._history.with_restart(record)
        child.history = child.history.with_restart(record)
        child.attempt = attempt
        affected = self._affected(child)
        for sibling in reversed(affected):
            if sibling is not child:
                await self._stop_child(sibling, f"restarting after {child.name!r} exited")
        self._groups += 1
        for later in self._children[child.index + 1 :]:
            if later.state is ChildState.PENDING and later.group == child.group and later not in affected:
                later.due, later.group = now + delay, self._groups  # not started yet: keep it behind
        for member in affected:
            if member is not child and member.spec.restart is Restart.TEMPORARY:
                continue  # stopped for a sibling's sake; temporary children are never restarted
            member.state = ChildState.PENDING
            member.due = now + delay
            member.group = self._groups
            member.restarts += 1
            self._emit(ChildRestartScheduled(member.name, self._name, attempt, delay, child.name))

    def _affected(self, child: _Child) -> list[_Child]:
        """The children a restart of `child` restarts, in spec order (stopped ones excluded)."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [child]
        first = 0 if self._strategy is Strategy.ONE_FOR_ALL else child.index
        return [c for c in self._children[first:] if c is child or c.state is not ChildState.STOPPED]

    async def _give_up(self, child: _Child, error: BaseException | None, now: float) -> NoReturn:
        if self._history.allows(now):  # the child's own policy set the limit that was hit
            policy, recent = child.policy, child.history.recent(now)
        else:
            policy, recent = self._policy, self._history.recent(now)
        with trio.CancelScope(shield=True):
            await self._stop_all(f"restart limit exceeded by {child.name!r}")
        exc = RestartLimitExceeded(
            supervisor=self._name,
            child=child.name,
            restarts=len(recent),
            window=policy.window if policy.max_restarts is not None else None,
            history=recent,
            error=error,
        )
        self._emit(exc)
        raise exc from error

    async def _stop_all(self, reason: str) -> None:
        """Stop every child in reverse order, all within the supervisor's shutdown_timeout."""
        deadline = trio.current_time() + self._shutdown_timeout
        for child in reversed(self._children):
            await self._stop_child(child, reason, deadline)

    async def _stop_child(self, child: _Child, reason: str, deadline: float = math.inf) -> None:
        """Cancel one child and wait at most its shutdown_timeout (and not past `deadline`); abandon it
        if it overstays."""
        run = child.run
        if run is None or child.state in (ChildState.STOPPED, ChildState.ABANDONED):
            if child.state is ChildState.PENDING:
                child.state = ChildState.STOPPED
            return
        run.stopping = True
        child.state = ChildState.STOPPING
        run.scope.cancel(reason=reason)
        remaining = deadline - trio.current_time()
        budget = max(0.0, min(child.spec.shutdown_timeout, remaining))
        if remaining > 0:  # past the supervisor's deadline, not even a checkpoint: abandoned at once
            with trio.CancelScope(shield=True), trio.move_on_after(budget):
                await run.finished.wait()
        child.run = None
        if not run.finished.is_set():
            child.state = ChildState.ABANDONED
            self._emit(ChildAbandoned(child.name, self._name, budget))
            return
        child.state = ChildState.STOPPED
        error = None if run.scope.cancelled_caught and run.error is None else run.error
        if error is not None:
            child.last_error = error
        self._emit(ChildExited(child.name, self._name, error, run.finished_at - run.spawned_at, stopped=True))
