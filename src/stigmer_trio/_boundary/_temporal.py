# The bridge to temporalio. Rule: the ONLY module that imports temporalio's client, worker and service
# API (the demo's workflow definitions, which the workflow sandbox re-imports, are in _demo). temporalio
# is asyncio-only; everything here runs it through trio-asyncio (the caller opened `_aioloop.open_loop()`,
# trio-asyncio's loop with a batched queue, in the root nursery) and bounds every call with a Trio deadline:
# the SDK waits 30 s against a hung server. Foreign exceptions stop here: callers only ever see
# TemporalUnavailable (and, for a refused start, WorkflowAlreadyStarted). One plain asyncio function,
# `run_demo_client`, serves the CLI's `demo` (a separate process, no Trio loop).
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import trio
import trio_asyncio
from temporalio.api.common.v1 import Memo, Payload, Payloads, WorkflowType
from temporalio.api.errordetails.v1 import WorkflowExecutionAlreadyStartedFailure
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, StartWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.converter import DataConverter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.workflow import _Definition

from .._core._errors import SubmissionFailed, TemporalUnavailable, WorkflowAlreadyStarted
from .._core._names import DEMO_TASK_QUEUE, NO_ARG
from ._aioloop import BatchedTrioEventLoop, ThreadCacheExecutor
from ._buildid import build_id
from ._tcp import accepts
from ._tls import TlsMaterial

if TYPE_CHECKING:
    from .._core._config import WorkerSpec
    from .._core._outbox import NewEntry

__all__ = [
    "Client",
    "Worker",
    "WorkflowHandle",
    "check_health",
    "connect",
    "describe_namespace",
    "encode_input",
    "encode_submission",
    "make_worker",
    "probe",
    "run_asyncio",
    "run_demo_client",
    "run_worker",
    "shutdown_worker",
    "start_queued",
    "start_workflow",
    "tcp_accepts",
    "worker_options",
    "workflow_result",
]

T = TypeVar("T")

# UNKNOWN is what an RPC in flight gets when the server dies under it ("transport error").
_DOWN = (
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.UNKNOWN,
)


@contextlib.contextmanager
def _unavailable_on_failure(what: str, address: str, *, maybe_started: bool = False) -> Iterator[None]:
    """Map "server down" errors to TemporalUnavailable; `maybe_started`: the request was a start."""
    try:
        yield
    except trio.TooSlowError:
        raise TemporalUnavailable(
            f"{what} {address}: no answer in time", maybe_started=maybe_started
        ) from None
    except RPCError as exc:
        if exc.status in _DOWN:
            message = f"{what} {address}: {exc.status.name}: {exc.message}"
            raise TemporalUnavailable(message, maybe_started=maybe_started) from exc
        raise
    except RuntimeError as exc:
        if str(exc).startswith("Failed client connect"):
            raise TemporalUnavailable(f"{what} {address}: {exc}", maybe_started=maybe_started) from exc
        raise


async def _call(
    call: Callable[[], Awaitable[T]], *, timeout: float, what: str, address: str, maybe_started: bool = False
) -> T:
    """Run an asyncio call from Trio within `timeout` seconds, mapping "server down" errors."""
    with _unavailable_on_failure(what, address, maybe_started=maybe_started), trio.fail_after(timeout):
        result: T = await trio_asyncio.aio_as_trio(call)()
        return result


_sdk_runtime: Runtime | None = None


def sdk_runtime() -> Runtime:
    """One temporalio Runtime whose core logs go to Python logging ("temporalio.core"), not stdout.

    The SDK's default prints its core warnings (e.g. a Worker's poll retries during an outage) to the
    process's stdout, which is the embedding program's, not ours.
    """
    global _sdk_runtime
    if _sdk_runtime is None:
        forward = LogForwardingConfig(logger=logging.getLogger("temporalio.core"))
        logs = LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding=forward
        )
        _sdk_runtime = Runtime(telemetry=TelemetryConfig(logging=logs))
    return _sdk_runtime


async def connect(
    address: str,
    namespace: str,
    *,
    timeout: float,
    tls: bool | TlsMaterial | None = None,
    api_key: str | None = None,
) -> Client:
    """Client.connect bounded by `timeout` (the SDK alone waits 30 s on a hung server). `tls` None: on
    exactly when an api_key is given (never a bearer token in cleartext by default); ConnectionConfig
    decides it the same way and refuses tls=False with an api_key unless plaintext_api_key is set.
    TlsMaterial: the PEM bytes the caller read for this connect (a CA, a client certificate and key)."""
    if tls is None:
        tls = api_key is not None
    sdk_tls: bool | TLSConfig
    if isinstance(tls, TlsMaterial):
        sdk_tls = TLSConfig(
            server_root_ca_cert=tls.ca,
            client_cert=tls.cert,
            client_private_key=tls.key,
            domain=tls.server_name,
        )
    else:
        sdk_tls = tls
    call = functools.partial(
        Client.connect, address, namespace=namespace, tls=sdk_tls, api_key=api_key, runtime=sdk_runtime()
    )
    try:
        return await _call(call, timeout=timeout, what="connect to", address=address)
    except TemporalUnavailable as exc:
        hint = _tls_hint(str(exc), client_cert=isinstance(tls, TlsMaterial) and tls.cert is not None)
        if not tls or hint is None:
            raise
        raise TemporalUnavailable(f"{exc} ({hint})") from exc


# What the SDK's TLS errors (rustls, through tonic) mean, said in our settings' words.
_TLS_HINTS = (
    ("(UnknownIssuer)", "the server's certificate is not signed by a CA we trust: tls ca_file / --tls-ca"),
    ("(NotValidForName", "the server's certificate does not name this host: tls server_name"),
    ("(Expired", "the server's certificate has expired"),
)


def _tls_hint(message: str, *, client_cert: bool) -> str | None:
    for marker, hint in _TLS_HINTS:
        if marker in message:
            return hint
    # TLS 1.3: the client's handshake is done before the server has judged its (missing) certificate;
    # the refusal shows as the first call's transport error (an EOF, a broken pipe, a closed connection).
    refused = "CertificateRequired" in message or (
        "call error after connection" in message and "tonic::transport::Error" in message
    )
    if refused and not client_cert:
        return (
            "the server closed the connection after the TLS handshake: it may require a client "
            "certificate (mTLS), and none was given: tls cert_file and key_file / --tls-cert and --tls-key"
        )
    return None


_TCP_PROBE_TIMEOUT = 0.5


async def tcp_accepts(address: str) -> bool:
    """Does anything accept TCP at `address` right now? (~27 µs of CPU against a closed local port.)"""
    host, _, port = address.rpartition(":")
    with trio.move_on_after(_TCP_PROBE_TIMEOUT):
        return await accepts(host.strip("[]"), int(port))
    return False


async def check_health(client: Client, *, timeout: float) -> None:
    """gRPC health check; TemporalUnavailable if it fails or takes longer than `timeout`."""
    address = client.service_client.config.target_host
    call = functools.partial(client.service_client.check_health, timeout=timedelta(seconds=timeout))
    if not await _call(call, timeout=timeout, what="health check of", address=address):
        raise TemporalUnavailable(f"health check of {address}: server reports not serving")


async def describe_namespace(client: Client, namespace: str, *, timeout: float) -> None:
    """DescribeNamespace; TemporalUnavailable if the server is down or slow."""
    address = client.service_client.config.target_host
    call = functools.partial(
        client.workflow_service.describe_namespace,
        DescribeNamespaceRequest(namespace=namespace),
        timeout=timedelta(seconds=timeout),
    )
    await _call(call, timeout=timeout, what=f"describe namespace {namespace!r} on", address=address)


async def probe(client: Client, namespaces: tuple[str, ...], *, timeout: float) -> None:
    """Health check plus DescribeNamespace of each namespace, side by side (one round trip, not one
    per call: a respawned server is ready that much sooner), all within `timeout` seconds; the first
    failure is raised (TemporalUnavailable)."""
    failures: list[TemporalUnavailable] = []

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except TemporalUnavailable as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel(reason="a probe failed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, functools.partial(check_health, client, timeout=timeout))
        for namespace in namespaces:
            nursery.start_soon(one, functools.partial(describe_namespace, client, namespace, timeout=timeout))
    if failures:
        raise failures[0]


async def _start_call(client: Client, call: Callable[[], Awaitable[T]], timeout: float) -> T:
    """A start request within `timeout`: a down server or the timeout is TemporalUnavailable with
    maybe_started=True (the request may have reached the server)."""
    address = client.service_client.config.target_host
    return await _call(call, timeout=timeout, what="start workflow on", address=address, maybe_started=True)


async def start_workflow(
    client: Client,
    workflow: Any,
    arg: Any,
    *,
    id: str,
    task_queue: str,
    timeout: float,
    eager: bool,
    **kwargs: Any,
) -> WorkflowHandle[Any, Any]:
    """Start a workflow (eagerly when a local worker serves the queue).

    TemporalUnavailable(maybe_started=True) when the request met a down server or its timeout;
    WorkflowAlreadyStarted when the id is taken (by the id conflict / reuse policies).
    """
    args = () if arg is NO_ARG else (arg,)
    options = {"rpc_timeout": timedelta(seconds=timeout), "request_eager_start": eager, **kwargs}
    call = functools.partial(client.start_workflow, workflow, *args, id=id, task_queue=task_queue, **options)
    try:
        handle: WorkflowHandle[Any, Any] = await _start_call(client, call, timeout)
    except WorkflowAlreadyStartedError as exc:
        raise WorkflowAlreadyStarted(exc.workflow_id, exc.workflow_type, exc.run_id) from exc
    return handle


def encode_input(args: Sequence[Any]) -> bytes:
    """A workflow's arguments as the outbox stores them: temporalio's default data converter, serialized
    as one Payloads message, sent later as they are (never encoded twice). Raises what the converter
    raises for an argument it cannot encode."""
    payloads = DataConverter.default.payload_converter.to_payloads(list(args))
    return Payloads(payloads=payloads).SerializeToString()


# The start options a queued start may carry, stored as JSON (seconds for durations, enum names for
# policies). Anything else (callables, search attributes, versioning overrides, RPC settings) is refused
# at submit: it cannot be stored, or it would not survive being sent again later.
_DURATION_OPTIONS = ("execution_timeout", "run_timeout", "task_timeout", "start_delay")
QUEUEABLE_OPTIONS = (*_DURATION_OPTIONS, "id_reuse_policy", "id_conflict_policy", "retry_policy",
                     "cron_schedule", "memo")  # fmt: skip


# The id policies a queued start may carry, and the one value of each it may not.
_POLICIES: dict[str, tuple[type[enum.IntEnum], enum.IntEnum]] = {
    "id_reuse_policy": (WorkflowIDReusePolicy, WorkflowIDReusePolicy.TERMINATE_IF_RUNNING),
    "id_conflict_policy": (WorkflowIDConflictPolicy, WorkflowIDConflictPolicy.TERMINATE_EXISTING),
}


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise ValueError(f"start option {name} must be a timedelta or a number of seconds >= 0, got {value!r}")


def _retry_policy(value: Any) -> dict[str, Any]:
    if not isinstance(value, RetryPolicy):
        raise ValueError(f"start option retry_policy must be a temporalio RetryPolicy, got {value!r}")
    value._validate()
    return {
        "initial_interval": value.initial_interval.total_seconds(),
        "backoff_coefficient": value.backoff_coefficient,
        "maximum_interval": None
        if value.maximum_interval is None
        else value.maximum_interval.total_seconds(),
        "maximum_attempts": value.maximum_attempts,
        "non_retryable_error_types": list(value.non_retryable_error_types or ()),
    }


def encode_submission(workflow: Any, args: Sequence[Any], options: dict[str, Any]) -> tuple[str, bytes, str]:
    """What the outbox stores for a submit: the workflow type name (from a name, a workflow class or its
    run method), the input (`encode_input`) and the start options as canonical JSON. Raises ValueError /
    TypeError naming the option for one that cannot be queued (see QUEUEABLE_OPTIONS) or would break
    idempotency (TERMINATE_IF_RUNNING, TERMINATE_EXISTING), and what the converter raises for an
    argument it cannot encode. Nothing is stored by this."""
    if isinstance(workflow, type):
        defn = _Definition.from_class(workflow)
        if defn is None or not defn.name:
            raise TypeError(f"{workflow.__qualname__} is not a (named) workflow class")
        workflow_type = defn.name
    else:
        workflow_type, _ = _Definition.get_name_and_result_type(workflow)
    if not workflow_type:
        raise ValueError("workflow type name must not be empty")
    stored: dict[str, Any] = {}
    for name, value in options.items():
        if name not in QUEUEABLE_OPTIONS:
            raise ValueError(
                f"start option {name!r} cannot be queued (queued starts take: {', '.join(QUEUEABLE_OPTIONS)})"
            )
        if value is None:
            continue
        if name in _DURATION_OPTIONS:
            stored[name] = _seconds(name, value)
        elif name in _POLICIES:
            kind, forbidden = _POLICIES[name]
            if not isinstance(value, kind):
                raise ValueError(f"start option {name} must be a {kind.__name__}, got {value!r}")
            if value is forbidden:
                raise ValueError(f"start option {name}={value.name} cannot be queued: a start sent again "
                                 "would terminate the run it started")  # fmt: skip
            stored[name] = value.name
        elif name == "retry_policy":
            stored[name] = _retry_policy(value)
        elif name == "cron_schedule":
            if not isinstance(value, str):
                raise ValueError(f"start option cron_schedule must be a string, got {value!r}")
            if value:
                stored[name] = value
        elif name == "memo":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"start option memo must be a dict with str keys, got {value!r}")
            converter = DataConverter.default.payload_converter
            stored[name] = {
                k: converter.to_payloads([v])[0].SerializeToString().hex() for k, v in value.items()
            }
    return workflow_type, encode_input(args), json.dumps(stored, sort_keys=True, separators=(",", ":"))


# The stored duration options (seconds) -> StartWorkflowExecutionRequest's duration fields.
_DURATIONS = {
    "workflow_task_timeout": "task_timeout",
    "workflow_execution_timeout": "execution_timeout",
    "workflow_run_timeout": "run_timeout",
    "workflow_start_delay": "start_delay",
}


def _apply_options(request: StartWorkflowExecutionRequest, options: dict[str, Any]) -> None:
    """The stored options (see encode_submission) onto a StartWorkflowExecutionRequest."""
    for field, name in _DURATIONS.items():
        if options.get(name) is not None:
            getattr(request, field).FromTimedelta(timedelta(seconds=options[name]))
    for name, (kind, _) in _POLICIES.items():
        if name in options:
            setattr(request, f"workflow_{name}", kind[options[name]].value)
    if "retry_policy" in options:
        policy = options["retry_policy"]
        maximum = policy["maximum_interval"]
        RetryPolicy(
            initial_interval=timedelta(seconds=policy["initial_interval"]),
            backoff_coefficient=policy["backoff_coefficient"],
            maximum_interval=None if maximum is None else timedelta(seconds=maximum),
            maximum_attempts=policy["maximum_attempts"],
            non_retryable_error_types=policy["non_retryable_error_types"] or None,
        ).apply_to_proto(request.retry_policy)
    if "cron_schedule" in options:
        request.cron_schedule = options["cron_schedule"]
    if "memo" in options:
        memo = Memo()
        for key, hex_payload in options["memo"].items():
            memo.fields[key].CopyFrom(Payload.FromString(bytes.fromhex(hex_payload)))
        request.memo.CopyFrom(memo)


# Answers that no retry of the same request can change: the entry is FAILED with the reason.
_PERMANENT = (
    RPCStatusCode.NOT_FOUND,  # the namespace does not exist
    RPCStatusCode.INVALID_ARGUMENT,  # a start option or value the server rejects
    RPCStatusCode.FAILED_PRECONDITION,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.UNIMPLEMENTED,
    RPCStatusCode.OUT_OF_RANGE,
)


async def start_queued(
    client: Client, namespace: str, entry: NewEntry, *, timeout: float, task_timeout: float | None = None
) -> str:
    """Start a queued entry through the raw service call with the entry's fixed request id: the server
    answers a repeat of that request (a retry after a lost answer, a daemon killed mid-drain) with the
    run the first one made, while it runs and after it closed, whatever the id reuse policy says. The run
    id. (The response's `started` is True for a repeated request too: it cannot tell the two apart.)
    `task_timeout` (seconds): the workflow task timeout when the entry's options have none.

    TemporalUnavailable(maybe_started=True) when the request met a down server, its timeout or an answer
    worth retrying (RESOURCE_EXHAUSTED, INTERNAL, ...): the retry is safe. WorkflowAlreadyStarted (with
    the run id holding it) when another start holds the id. SubmissionFailed when the server refused the
    request for good (a namespace that does not exist, an option it rejects)."""
    options = json.loads(entry.options)
    if task_timeout is not None:
        options.setdefault("task_timeout", task_timeout)
    request = StartWorkflowExecutionRequest(
        namespace=namespace,
        workflow_id=entry.id,
        workflow_type=WorkflowType(name=entry.workflow_type),
        task_queue=TaskQueue(name=entry.task_queue),
        input=Payloads.FromString(entry.payloads),
        request_id=entry.request_id,
        identity=client.identity,
    )
    _apply_options(request, options)
    rpc = client.workflow_service.start_workflow_execution
    call = functools.partial(rpc, request, retry=False, timeout=timedelta(seconds=timeout))
    address = client.service_client.config.target_host
    try:
        response = await _start_call(client, call, timeout)
    except RPCError as exc:
        if exc.status is RPCStatusCode.ALREADY_EXISTS:
            details = WorkflowExecutionAlreadyStartedFailure()
            holder = None
            if exc.grpc_status.details and exc.grpc_status.details[0].Unpack(details):
                holder = details.run_id or None
            raise WorkflowAlreadyStarted(entry.id, entry.workflow_type, holder) from exc
        message = f"start workflow on {address}: {exc.status.name}: {exc.message}"
        if exc.status in _PERMANENT:
            raise SubmissionFailed(message) from exc
        raise TemporalUnavailable(message, maybe_started=True) from exc
    run_id: str = response.run_id
    return run_id


async def workflow_result(handle: WorkflowHandle[Any, Any]) -> Any:
    """Wait for a workflow's result (no deadline of ours: workflows may run for long)."""
    with _unavailable_on_failure("workflow result from", handle.id, maybe_started=True):
        return await trio_asyncio.aio_as_trio(handle.result)()


async def run_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an asyncio coroutine function on the runtime's loop."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args)
    return result


# Options that choose the Worker's build id or versioning: with none of them, ours is passed (_buildid).
_VERSIONING = frozenset({"build_id", "deployment_config", "use_worker_versioning"})


def worker_options(spec: WorkerSpec) -> dict[str, Any]:
    """The Worker options `spec` gives: the runtime's defaults (the sticky timeout; a build id that costs
    ~2 ms instead of the SDK's ~60 ms, see _buildid), then spec.options."""
    defaults: dict[str, Any] = {
        "sticky_queue_schedule_to_start_timeout": timedelta(seconds=spec.sticky_timeout)
    }
    if not _VERSIONING & spec.options.keys():
        defaults["build_id"] = build_id()
    return {**defaults, **spec.options}


# Workflow definitions already validated in the sandbox by this process (id -> the definition, kept
# alive so that its id is never reused).
_VALIDATED: dict[int, _Definition] = {}


@dataclasses.dataclass(frozen=True)
class _ValidatedOnce(SandboxedWorkflowRunner):
    """The SDK's sandboxed runner, which validates a workflow definition once per process instead of
    once per Worker: validation runs the workflow's module in a fresh sandbox (3-7 ms each), and the
    runtime builds new Workers at every reconnection, for every WorkerSpec, on the restart's critical
    path. The same class under the same (default) restrictions gives the same answer every time."""

    def prepare_workflow(self, defn: _Definition) -> None:
        if id(defn) not in _VALIDATED:
            super().prepare_workflow(defn)
            _VALIDATED[id(defn)] = defn


def make_worker(
    client: Client, spec: WorkerSpec, on_fatal_error: Callable[[BaseException], Awaitable[None]]
) -> Worker:
    """A temporalio Worker for `spec` whose executors the current trio-asyncio loop accepts.

    Sync activities run in Trio worker threads (a TrioExecutor: `trio.from_thread` works in them).
    Workflow activations (sandboxed, deterministic: they never call Trio) run in Trio's thread cache
    without a Trio task each when the loop is ours (`_aioloop.open_loop`, which runs any executor as
    asyncio does); on a stock trio-asyncio loop, which takes only TrioExecutors, in the TrioExecutor."""
    options = worker_options(spec)
    options.setdefault("workflow_runner", _ValidatedOnce())  # a runner of the user's own: left alone
    executor = trio_asyncio.TrioExecutor(max_workers=options.pop("max_workers", 200))
    batched = isinstance(trio_asyncio.current_loop.get(), BatchedTrioEventLoop)
    workflow_executor = ThreadCacheExecutor() if batched else executor
    return Worker(
        client,
        task_queue=spec.task_queue,
        workflows=list(spec.workflows),
        activities=list(spec.activities),
        workflow_task_executor=workflow_executor,
        activity_executor=executor,
        graceful_shutdown_timeout=timedelta(seconds=spec.graceful_shutdown_timeout),
        on_fatal_error=on_fatal_error,
        **options,
    )


async def run_worker(worker: Worker) -> None:
    """Worker.run() until it ends, or until Trio cancels us: then stop waiting at once.

    Cancelling Worker.run() makes it run its whole shutdown first (30 s against a hung server) and
    trio-asyncio would wait for that; so the run is shielded and, on cancellation, cancelled and left
    to finish on its own (our caller already gave Worker.shutdown() its bounded chance).
    """

    async def supervise() -> None:
        task = asyncio.ensure_future(worker.run())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise

    await trio_asyncio.aio_as_trio(supervise)()


async def shutdown_worker(worker: Worker) -> None:
    await trio_asyncio.aio_as_trio(worker.shutdown)()


def run_demo_client(address: str, namespace: str, name: str) -> tuple[str, float]:
    """The CLI's `demo`: run the demo workflow through a plain asyncio client (a process of its own, no
    Trio loop); its result and the round trip in seconds. The SDK's exceptions pass through."""
    import time
    import uuid

    from ._demo import StigmerDemo

    async def main() -> tuple[str, float]:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), 10)
        began = time.perf_counter()
        result = await asyncio.wait_for(
            client.execute_workflow(
                StigmerDemo.run, name, id=f"stigmer-demo-{uuid.uuid4()}", task_queue=DEMO_TASK_QUEUE
            ),
            30,
        )
        return result, time.perf_counter() - began

    return asyncio.run(main())
