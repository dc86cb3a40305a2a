# RestartPolicy and the restart bookkeeping built on it. Rule: everything here is pure. Nothing reads a
# clock (the caller passes `now`), nothing uses the global `random` (the caller passes a Random), and
# nothing here imports trio or does I/O. The Supervisor owns the clock and the side effects.
from __future__ import annotations

import math
import random
from typing import Any

import attrs

from ._errors import ConfigError
from ._events import RestartRecord

__all__ = ["RestartHistory", "RestartPolicy", "next_attempt"]


def _number(field: str, value: Any, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    result = float(value)
    if math.isnan(result) or (math.isinf(result) and not allow_inf):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    return result


def _at_least(bound: float, *, allow_inf: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[float], value: Any) -> None:
        number = _number(attribute.name, value, allow_inf=allow_inf)
        if number < bound:
            raise ConfigError(f"{attribute.name} must be >= {bound:g}, got {value!r}")

    return check


def _jitter(instance: object, attribute: attrs.Attribute[float], value: Any) -> None:
    number = _number(attribute.name, value)
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _max_restarts(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{attribute.name} must be a whole number or None, got {value!r}")
    if value < 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _window(instance: object, attribute: attrs.Attribute[float], value: Any) -> None:
    number = _number(attribute.name, value, allow_inf=True)
    if number <= 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class RestartPolicy:
    """How fast to restart a failed child, and when to give up.

    ``delay(1)`` (the first restart after a stable run) is ``initial_delay``; attempt k >= 2 waits
    ``min(max_delay, backoff * multiplier ** (k - 2))``; either is then multiplied by
    ``uniform(1 - jitter, 1 + jitter)``. At most ``max_restarts`` restarts are allowed within any
    sliding ``window`` seconds (``None``: no limit). A run that was ready (its child called
    ``task_status.started()``) for at least ``reset_after`` seconds was stable: the next failure is
    attempt 1 again. A run that never became ready never was, however long it tried.
    """

    initial_delay: float = attrs.field(default=0.0, validator=_at_least(0.0))
    backoff: float = attrs.field(default=0.1, validator=_at_least(0.0))
    multiplier: float = attrs.field(default=2.0, validator=_at_least(1.0))
    max_delay: float = attrs.field(default=30.0, validator=_at_least(0.0))
    jitter: float = attrs.field(default=0.1, validator=_jitter)
    max_restarts: int | None = attrs.field(default=5, validator=_max_restarts)
    window: float = attrs.field(default=60.0, validator=_window)
    reset_after: float = attrs.field(default=10.0, validator=_at_least(0.0, allow_inf=True))

    def base_delay(self, attempt: int) -> float:
        """The delay before jitter: capped, never an OverflowError however large `attempt` is."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be a whole number >= 1, got {attempt!r}")
        if attempt == 1:
            return float(self.initial_delay)
        if self.backoff == 0:
            return 0.0
        try:
            raw = self.backoff * float(self.multiplier) ** (attempt - 2)
        except OverflowError:  # multiplier ** huge: the cap applies
            return float(self.max_delay)
        return float(min(self.max_delay, raw))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number `attempt` (1-based), jittered with `rng`."""
        base = self.base_delay(attempt)
        if self.jitter == 0:
            return base
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


def next_attempt(previous: int, ready_for: float, policy: RestartPolicy) -> int:
    """The attempt number of the restart that follows a run that was ready for `ready_for` seconds.

    `previous` is the attempt number of the restart that started that run (0 for the first run).
    """
    if ready_for >= policy.reset_after:
        return 1
    return previous + 1


@attrs.frozen
class RestartHistory:
    """The restarts that still count against a policy's window. Immutable: methods return new ones."""

    policy: RestartPolicy
    records: tuple[RestartRecord, ...] = ()

    def recent(self, now: float) -> tuple[RestartRecord, ...]:
        """The restarts within the sliding window that ends at `now`."""
        start = now - self.policy.window
        return tuple(r for r in self.records if r.at > start)

    def allows(self, now: float) -> bool:
        """May one more restart happen at time `now`?"""
        limit = self.policy.max_restarts
        return limit is None or len(self.recent(now)) < limit

    def with_restart(self, record: RestartRecord) -> RestartHistory:
        """This history plus `record`, forgetting what has left the window."""
        return RestartHistory(self.policy, (*self.recent(record.at), record))
