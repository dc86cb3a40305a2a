"""The outbox's settings (OutboxConfig through flags > env > TOML > defaults) and what a submit may carry
(encode_submission: the workflow type, the input, the start options it can store; the ones it refuses)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from stigmer_trio import ConfigError, OutboxConfig
from stigmer_trio._boundary._temporal import _apply_options, encode_input, encode_submission
from stigmer_trio._core._config import resolve, resolve_outbox


@workflow.defn(name="Named")
class NamedWorkflow:
    @workflow.run
    async def run(self, x: int) -> int:
        return x


class TestOutboxConfig:
    def test_defaults(self) -> None:
        config = resolve(flags={}, env={}, file={})
        assert config.outbox == OutboxConfig(max_pending=100_000, retain=7 * 24 * 3600.0, concurrency=16)

    def test_file_env_flags_precedence(self) -> None:
        file = {"outbox": {"max_pending": 10, "retain": 60, "concurrency": 2}}
        env = {"STIGMER_TRIO_OUTBOX_CONCURRENCY": "4", "STIGMER_TRIO_OUTBOX_RETAIN": "30.5"}
        config = resolve_outbox(flags={"outbox_concurrency": 8}, env=env, file=file)
        assert config == OutboxConfig(max_pending=10, retain=30.5, concurrency=8)

    def test_disabled(self) -> None:
        assert resolve(flags={}, env={}, file={"outbox": {"enabled": False}}).outbox is None
        assert resolve_outbox(flags={}, env={"STIGMER_TRIO_OUTBOX_ENABLED": "off"}) is None

    @pytest.mark.parametrize(
        ("file", "env", "message"),
        [
            ({"outbox": {"max_pending": 0}}, {}, "outbox max_pending must be a whole number >= 1, got 0"),
            ({"outbox": {"retain": -1}}, {}, "outbox retain must be a number of seconds > 0, got -1"),
            ({"outbox": {"concurrency": "x"}}, {}, "outbox concurrency must be a whole number >= 1, got 'x'"),
            ({"outbox": {"size": 3}}, {}, r"\[outbox\]: unknown setting 'size'"),
            ({"outbox": 3}, {}, r"\[outbox\] must be a table, got 3"),
            (
                {},
                {"STIGMER_TRIO_OUTBOX_MAX_PENDING": "lots"},
                "STIGMER_TRIO_OUTBOX_MAX_PENDING must be a number",
            ),
            (
                {},
                {"STIGMER_TRIO_OUTBOX_ENABLED": "maybe"},
                "STIGMER_TRIO_OUTBOX_ENABLED must be true or false",
            ),
            ({"outbox": {"enabled": "yes"}}, {}, "outbox enabled must be true or false, got 'yes'"),
        ],
    )
    def test_bad_values_name_the_field_and_value(self, file: Any, env: Any, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            resolve(flags={}, env=env, file=file)


class TestEncodeSubmission:
    def test_type_from_name_class_or_run_method(self) -> None:
        assert encode_submission("Plain", [], {})[0] == "Plain"
        assert encode_submission(NamedWorkflow, [], {})[0] == "Named"
        assert encode_submission(NamedWorkflow.run, [], {})[0] == "Named"
        with pytest.raises(TypeError, match="not a"):
            encode_submission(dict, [], {})
        with pytest.raises(ValueError, match="must not be empty"):
            encode_submission("", [], {})

    def test_input_is_the_default_converters(self) -> None:
        assert encode_submission("W", [1, {"a": None}], {})[1] == encode_input([1, {"a": None}])

    def test_an_argument_that_cannot_be_encoded_raises(self) -> None:
        with pytest.raises(TypeError, match="not JSON serializable"):
            encode_submission("W", [object()], {})

    def test_stored_options_are_canonical_and_reach_the_request(self) -> None:
        retry = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3)
        options = {
            "task_timeout": timedelta(seconds=7),
            "execution_timeout": 60,
            "run_timeout": timedelta(minutes=1),
            "start_delay": timedelta(seconds=1.5),
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
            "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
            "retry_policy": retry,
            "cron_schedule": "@hourly",
            "memo": {"who": "me"},
        }
        _, _, stored = encode_submission("W", [], options)
        assert stored == json.dumps(json.loads(stored), sort_keys=True, separators=(",", ":"))
        _, _, reordered = encode_submission("W", [], dict(reversed(list(options.items()))))
        assert reordered == stored  # the same options in another order: the same start
        request = StartWorkflowExecutionRequest()
        _apply_options(request, json.loads(stored))
        assert request.workflow_task_timeout.ToTimedelta() == timedelta(seconds=7)
        assert request.workflow_execution_timeout.ToTimedelta() == timedelta(seconds=60)
        assert request.workflow_run_timeout.ToTimedelta() == timedelta(minutes=1)
        assert request.workflow_start_delay.ToTimedelta() == timedelta(seconds=1.5)
        assert request.workflow_id_reuse_policy == WorkflowIDReusePolicy.REJECT_DUPLICATE.value
        assert request.workflow_id_conflict_policy == WorkflowIDConflictPolicy.USE_EXISTING.value
        sdk = StartWorkflowExecutionRequest()
        retry.apply_to_proto(sdk.retry_policy)  # what the SDK's own start would send
        assert request.retry_policy == sdk.retry_policy
        assert request.cron_schedule == "@hourly"
        assert set(request.memo.fields) == {"who"}

    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            (
                {"id_reuse_policy": WorkflowIDReusePolicy.TERMINATE_IF_RUNNING},
                ValueError,
                "TERMINATE_IF_RUNNING",
            ),
            (
                {"id_conflict_policy": WorkflowIDConflictPolicy.TERMINATE_EXISTING},
                ValueError,
                "TERMINATE_EXIST",
            ),
            ({"id_reuse_policy": 1}, ValueError, "id_reuse_policy must be a WorkflowIDReusePolicy"),
            ({"rpc_timeout": timedelta(seconds=1)}, ValueError, "'rpc_timeout' cannot be queued"),
            ({"request_eager_start": True}, ValueError, "'request_eager_start' cannot be queued"),
            ({"search_attributes": {}}, ValueError, "'search_attributes' cannot be queued"),
            ({"task_timeout": "soon"}, ValueError, "task_timeout must be a timedelta or a number"),
            ({"task_timeout": -1}, ValueError, "task_timeout must be a timedelta or a number"),
            (
                {"retry_policy": {"maximum_attempts": 3}},
                ValueError,
                "retry_policy must be a temporalio RetryPolicy",
            ),
            ({"cron_schedule": 5}, ValueError, "cron_schedule must be a string"),
            ({"memo": {1: "x"}}, ValueError, "memo must be a dict with str keys"),
        ],
    )
    def test_refused_options_name_themselves(
        self, options: Any, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            encode_submission("W", [], options)
