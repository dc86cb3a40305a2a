# The bridge to temporalio. Rule: the ONLY module that imports temporalio. temporalio is asyncio-only;
# everything here runs it through trio-asyncio (the caller opened `trio_asyncio.open_loop()` in the
# root nursery) and bounds every call with a Trio deadline of our own: the SDK waits 30 s against a
# hung server. Foreign exceptions stop here: callers only ever see TemporalUnavailable.
from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import trio
import trio_asyncio
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from ._errors import TemporalUnavailable

__all__ = ["Client", "check_health", "connect", "describe_namespace", "probe"]

T = TypeVar("T")

_DOWN = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)


@contextlib.contextmanager
def _unavailable_on_failure(what: str, address: str) -> Iterator[None]:
    try:
        yield
    except trio.TooSlowError:
        raise TemporalUnavailable(f"{what} {address}: no answer in time") from None
    except RPCError as exc:
        if exc.status in _DOWN:
            raise TemporalUnavailable(f"{what} {address}: {exc.status.name}: {exc.message}") from exc
        raise
    except RuntimeError as exc:
        if str(exc).startswith("Failed client connect"):
            raise TemporalUnavailable(f"{what} {address}: {exc}") from exc
        raise


async def _call(call: Callable[[], Awaitable[T]], *, timeout: float, what: str, address: str) -> T:
    """Run an asyncio call from Trio within `timeout` seconds, mapping "server down" errors."""
    with _unavailable_on_failure(what, address), trio.fail_after(timeout):
        result: T = await trio_asyncio.aio_as_trio(call)()
        return result


async def connect(address: str, namespace: str, *, timeout: float) -> Client:
    """Client.connect bounded by `timeout` (the SDK alone waits 30 s on a hung server)."""
    call = functools.partial(Client.connect, address, namespace=namespace)
    return await _call(call, timeout=timeout, what="connect to", address=address)


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
    """Health check plus DescribeNamespace of each namespace, all within `timeout` seconds."""
    deadline = trio.current_time() + timeout
    await check_health(client, timeout=timeout)
    for namespace in namespaces:
        await describe_namespace(client, namespace, timeout=max(0.001, deadline - trio.current_time()))
