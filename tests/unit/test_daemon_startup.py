"""The daemon's start-up: stop signals before the Trio run, and the start-up phases it logs."""

from __future__ import annotations

import signal

import pytest

from stigmer_trio._daemon import StartupPhases, _StartupStop, _StopRequested


class TestStartupStop:
    def test_a_stop_is_raised_at_once_when_not_held(self) -> None:
        """SIGTERM / SIGHUP before the Trio run: _StopRequested in the main thread, now."""
        with pytest.raises(_StopRequested):
            _StartupStop()(signal.SIGTERM, None)

    def test_a_stop_while_held_waits_for_the_release(self) -> None:
        """While the dev server is being spawned a stop is only noted; the release raises it, once the
        spawn has handed its server over (so the cleanup can stop it)."""
        stopper = _StartupStop()
        stopper.held = True
        stopper(signal.SIGHUP, None)  # no exception mid-spawn
        with pytest.raises(_StopRequested):
            stopper.release()
        assert not stopper.held

    def test_release_without_a_stop_is_quiet(self) -> None:
        stopper = _StartupStop()
        stopper.held = True
        stopper.release()
        with pytest.raises(_StopRequested):
            stopper(signal.SIGTERM, None)  # released: raised at once again


class TestStartupPhases:
    def test_phases_are_ms_from_the_origin_in_time_order(self) -> None:
        """Each mark is kept once (the first), and the line lists them in the order they happened."""
        phases = StartupPhases(started_at=100.0)
        phases.marks = {"b": 100.25, "a": 100.125}
        phases.mark("a")  # already there: kept
        assert "a 125, b 250" == phases.line()
