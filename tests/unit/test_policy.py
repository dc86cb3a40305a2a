"""RestartPolicy and the restart bookkeeping: pure logic, no clock, no trio."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stigmer_trio import ConfigError, RestartPolicy, RestartRecord, StigmerError
from stigmer_trio._core._policy import RestartHistory, next_attempt

EXACT = RestartPolicy(initial_delay=0.5, backoff=1.0, multiplier=2.0, max_delay=4.0, jitter=0.0)


class TestDelay:
    def test_first_attempt_waits_initial_delay(self) -> None:
        """Attempt 1, the first restart after a stable run, waits initial_delay."""
        assert 0.5 == EXACT.delay(1, random.Random(0))

    def test_exponential_then_capped(self) -> None:
        """Attempt k >= 2 waits min(max_delay, backoff * multiplier ** (k - 2))."""
        assert [0.5, 1.0, 2.0, 4.0, 4.0, 4.0] == [EXACT.delay(k, random.Random(0)) for k in range(1, 7)]

    def test_defaults(self) -> None:
        """The default policy: immediate first restart, then 0.1 s doubling up to 30 s."""
        policy = RestartPolicy(jitter=0.0)
        assert [0.0, 0.1, 0.2, 0.4] == [policy.delay(k, random.Random(0)) for k in range(1, 5)]
        assert 30.0 == policy.delay(100, random.Random(0))

    @pytest.mark.parametrize("attempt", [1_000, 10**6, 10**100, 10**400])
    def test_huge_attempt_is_capped_without_overflow(self, attempt: int) -> None:
        """No OverflowError however large the attempt number gets."""
        assert 4.0 == EXACT.delay(attempt, random.Random(0))

    def test_multiplier_one_is_constant(self) -> None:
        """A multiplier of 1 keeps the backoff constant, also for huge attempts."""
        policy = RestartPolicy(backoff=0.3, multiplier=1.0, jitter=0.0)
        assert [0.3, 0.3] == [policy.delay(2, random.Random(0)), policy.delay(10**9, random.Random(0))]

    def test_zero_backoff_stays_zero(self) -> None:
        """backoff=0 means every restart after the first is immediate too."""
        policy = RestartPolicy(backoff=0.0, jitter=0.0)
        assert 0.0 == policy.delay(10**6, random.Random(0))

    def test_jitter_is_applied_after_the_cap(self) -> None:
        """The capped delay is multiplied by uniform(1 - jitter, 1 + jitter) from the given rng."""
        policy = RestartPolicy(backoff=1.0, max_delay=4.0, jitter=0.5)
        expected = 4.0 * random.Random(7).uniform(0.5, 1.5)
        assert expected == policy.delay(50, random.Random(7))

    def test_jitter_desynchronises_restarts(self) -> None:
        """Two runtimes with different rngs do not restart in lockstep."""
        policy = RestartPolicy(backoff=1.0, jitter=0.1)
        assert policy.delay(3, random.Random(1)) != policy.delay(3, random.Random(2))

    def test_does_not_touch_global_random(self) -> None:
        """delay() draws only from the rng it is given."""
        random.seed(1234)
        expected = random.random()
        random.seed(1234)
        RestartPolicy(jitter=0.5).delay(3, random.Random(0))
        assert expected == random.random()

    @given(
        attempt=st.integers(min_value=1, max_value=10**30),
        initial=st.floats(min_value=0, max_value=100),
        backoff=st.floats(min_value=0, max_value=100),
        multiplier=st.floats(min_value=1, max_value=1000),
        max_delay=st.floats(min_value=0, max_value=1000),
        jitter=st.floats(min_value=0, max_value=0.999),
        seed=st.integers(),
    )
    def test_jittered_delay_within_bounds(
        self,
        attempt: int,
        initial: float,
        backoff: float,
        multiplier: float,
        max_delay: float,
        jitter: float,
        seed: int,
    ) -> None:
        """Every delay lies within base * [1 - jitter, 1 + jitter], base never above the cap."""
        policy = RestartPolicy(
            initial_delay=initial, backoff=backoff, multiplier=multiplier, max_delay=max_delay, jitter=jitter
        )
        base = policy.base_delay(attempt)
        delay = policy.delay(attempt, random.Random(seed))
        assert math.isfinite(delay)
        if attempt >= 2:
            assert base <= max_delay
        assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9

    @pytest.mark.parametrize("attempt", [0, -1, True, 1.5])
    def test_attempt_must_be_positive_int(self, attempt: int) -> None:
        """Attempts are counted from 1."""
        with pytest.raises(ValueError, match="attempt"):
            EXACT.delay(attempt, random.Random(0))


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("initial_delay", -1.0),
            ("backoff", -0.1),
            ("multiplier", 0.5),
            ("max_delay", -3),
            ("jitter", 1.0),
            ("jitter", -0.1),
            ("max_restarts", -1),
            ("window", 0.0),
            ("window", -5),
            ("reset_after", -1.0),
            ("initial_delay", math.nan),
            ("backoff", math.inf),
            ("max_delay", math.inf),
            ("multiplier", "2"),
            ("max_restarts", 2.5),
            ("max_restarts", True),
            ("jitter", None),
        ],
    )
    def test_bad_value_names_field_and_value(self, field: str, value: object) -> None:
        """Each bad value raises ConfigError naming the field and the value."""
        with pytest.raises(ConfigError) as info:
            RestartPolicy(**{field: value})  # type: ignore[arg-type]
        message = str(info.value)
        assert field in message
        assert repr(value) in message

    def test_config_error_is_value_error_and_stigmer_error(self) -> None:
        """ConfigError can be caught as ValueError or as StigmerError."""
        with pytest.raises(ValueError, match="jitter"):
            RestartPolicy(jitter=2)
        assert issubclass(ConfigError, StigmerError)

    def test_unlimited_and_infinite_values_allowed(self) -> None:
        """max_restarts=None, an infinite window and reset_after are valid."""
        policy = RestartPolicy(max_restarts=None, window=math.inf, reset_after=math.inf)
        assert policy.max_restarts is None

    def test_policy_is_frozen(self) -> None:
        """A policy cannot be changed after construction."""
        policy = RestartPolicy()
        with pytest.raises(AttributeError):
            policy.backoff = 1.0  # type: ignore[misc]


def _record(at: float, attempt: int = 1) -> RestartRecord:
    return RestartRecord(child="c", at=at, attempt=attempt, delay=0.0)


class TestWindow:
    def test_allows_up_to_max_restarts(self) -> None:
        """max_restarts restarts fit in the window; one more does not."""
        history = RestartHistory(RestartPolicy(max_restarts=3, window=10.0))
        decisions = []
        for t in (0.0, 1.0, 2.0, 3.0):
            decisions.append(history.allows(t))
            if decisions[-1]:
                history = history.with_restart(_record(t))
        assert [True, True, True, False] == decisions

    def test_window_slides(self) -> None:
        """A restart older than `window` seconds no longer counts."""
        history = RestartHistory(RestartPolicy(max_restarts=2, window=10.0))
        history = history.with_restart(_record(0.0)).with_restart(_record(5.0))
        assert [False, True, True] == [history.allows(9.9), history.allows(10.0), history.allows(10.01)]

    def test_window_edge_is_exclusive(self) -> None:
        """A restart exactly `window` seconds ago has left the window."""
        history = RestartHistory(RestartPolicy(window=10.0)).with_restart(_record(0.0))
        assert () == history.recent(10.0)
        assert (_record(0.0),) == history.recent(9.999)

    def test_forgets_what_left_the_window(self) -> None:
        """The history stays bounded: records outside the window are dropped on the next restart."""
        history = RestartHistory(RestartPolicy(max_restarts=None, window=1.0))
        for t in range(1000):
            history = history.with_restart(_record(float(t)))
        assert 1 == len(history.records)

    def test_unlimited(self) -> None:
        """max_restarts=None always allows."""
        history = RestartHistory(RestartPolicy(max_restarts=None, window=100.0))
        for t in range(100):
            history = history.with_restart(_record(float(t)))
        assert history.allows(100.0)

    def test_zero_restarts_allows_none(self) -> None:
        """max_restarts=0: a failure is never restarted."""
        assert not RestartHistory(RestartPolicy(max_restarts=0)).allows(0.0)

    def test_history_is_immutable(self) -> None:
        """with_restart returns a new history and leaves the old one untouched."""
        empty = RestartHistory(RestartPolicy())
        empty.with_restart(_record(1.0))
        assert () == empty.records


class TestResetAfter:
    def test_short_runs_escalate(self) -> None:
        """Runs shorter than reset_after count up the attempt number."""
        policy = RestartPolicy(reset_after=10.0)
        assert [1, 2, 3] == [next_attempt(n, 0.5, policy) for n in (0, 1, 2)]

    def test_stable_run_resets(self) -> None:
        """A run of at least reset_after seconds makes the next failure attempt 1 again."""
        policy = RestartPolicy(reset_after=10.0)
        assert [1, 1, 6] == [
            next_attempt(7, 10.0, policy),
            next_attempt(7, 99.0, policy),
            next_attempt(5, 9.9, policy),
        ]
