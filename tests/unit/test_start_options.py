"""The sticky queue and workflow task timeouts in the config; the start errors' attributes; the daemon's
log takes temporalio's loggers in, formatted."""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import re
from collections.abc import Iterator
from typing import Any

import pytest

from stigmer_trio import (
    ConfigError,
    ConnectionConfig,
    StigmerError,
    TemporalUnavailable,
    WorkerSpec,
    WorkflowAlreadyStarted,
)
from stigmer_trio._core._config import STICKY_TIMEOUT, WORKFLOW_TASK_TIMEOUT


class TestStickyTimeout:
    def test_default(self) -> None:
        """WorkerSpec.sticky_timeout defaults to the measured STICKY_TIMEOUT."""
        assert STICKY_TIMEOUT == WorkerSpec("q").sticky_timeout

    @pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "2", True, None])
    def test_bad_values(self, value: Any) -> None:
        """A bad sticky_timeout is one ConfigError line naming the field and the value."""
        with pytest.raises(ConfigError) as info:
            WorkerSpec("q", sticky_timeout=value)
        message = str(info.value)
        assert message.startswith("sticky_timeout must be a number of seconds > 0, got ")
        assert repr(value) in message
        assert "\n" not in message


class TestWorkflowTaskTimeout:
    def test_default(self) -> None:
        """ConnectionConfig.workflow_task_timeout defaults to the measured WORKFLOW_TASK_TIMEOUT."""
        assert WORKFLOW_TASK_TIMEOUT == ConnectionConfig().workflow_task_timeout

    def test_none_is_allowed(self) -> None:
        """None leaves the task timeout to the SDK."""
        assert ConnectionConfig(workflow_task_timeout=None).workflow_task_timeout is None

    @pytest.mark.parametrize("value", [0, -2, math.inf, "5", False])
    def test_bad_values(self, value: Any) -> None:
        """A bad workflow_task_timeout is one ConfigError line naming the field and the value."""
        with pytest.raises(
            ConfigError, match=r"^workflow_task_timeout must be a number of seconds > 0, got "
        ):
            ConnectionConfig(workflow_task_timeout=value)


class TestStartErrors:
    def test_temporal_unavailable_is_backward_compatible(self) -> None:
        """TemporalUnavailable(message) still works; maybe_started defaults to False."""
        error = TemporalUnavailable("down")
        assert ("down", False) == (str(error), error.maybe_started)

    def test_maybe_started_keyword(self) -> None:
        """maybe_started is a keyword; it survives pickling (errors cross process pools)."""
        error = pickle.loads(pickle.dumps(TemporalUnavailable("down", maybe_started=True)))
        assert error.maybe_started

    def test_workflow_already_started(self) -> None:
        """WorkflowAlreadyStarted is a StigmerError carrying the id, the type and the existing run id."""
        error = WorkflowAlreadyStarted("order-1", "Order", "run-7")
        assert isinstance(error, StigmerError)
        assert ("order-1", "Order", "run-7") == (error.workflow_id, error.workflow_type, error.run_id)
        assert "workflow 'order-1' of type 'Order' was already started (run run-7)" == str(error)
        again = pickle.loads(pickle.dumps(error))
        assert ("order-1", "Order", "run-7") == (again.workflow_id, again.workflow_type, again.run_id)


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    """configure_logging rewires process-wide loggers: put them back."""
    saved = {}
    for name in ("stigmer_trio", "temporalio"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


class TestDaemonLogging:
    def test_temporalio_warning_in_text(self, restore_loggers: None) -> None:
        """A warning of "temporalio.core" comes out with time, level and logger, like our own lines."""
        from stigmer_trio._daemon import configure_logging

        stream = io.StringIO()
        configure_logging(stream, log_format="text")
        logging.getLogger("temporalio.core").warning("poll retry %d", 3)
        logging.getLogger("stigmer_trio.events").info("ours")
        first, second = stream.getvalue().splitlines()
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
        assert re.fullmatch(rf"{stamp} WARNING temporalio\.core: poll retry 3", first), first
        assert re.fullmatch(rf"{stamp} INFO ours", second), second

    def test_temporalio_warning_in_json(self, restore_loggers: None) -> None:
        """In JSON, a temporalio warning is one object with ts, level, logger and message."""
        from stigmer_trio._daemon import configure_logging

        stream = io.StringIO()
        configure_logging(stream, log_format="json")
        logging.getLogger("temporalio.worker._worker").warning("Worker failed")
        document = json.loads(stream.getvalue())
        assert {"level": "WARNING", "event": "log", "logger": "temporalio.worker._worker",
                "message": "Worker failed"} == {k: v for k, v in document.items() if k != "ts"}  # fmt: skip
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", document["ts"])

    def test_temporalio_info_is_not_logged(self, restore_loggers: None) -> None:
        """temporalio's INFO lines (every Worker shutdown) stay out; they do not reach lastResort either."""
        from stigmer_trio._daemon import configure_logging

        stream = io.StringIO()
        configure_logging(stream)
        logging.getLogger("temporalio.worker._worker").info("Beginning worker shutdown")
        assert "" == stream.getvalue()
        assert not logging.getLogger("temporalio").propagate
