# Public test helpers for programs that embed stigmer_trio. Owns nothing itself: FaultProxy lives in
# _faultproxy; this module only exports it and its `open_*` form. Must never be imported by the runtime's
# own modules: it is for tests, and it imports trio at import time.
"""Test helpers for programs that embed stigmer_trio: a fault-injecting TCP proxy.

    async with open_fault_proxy("127.0.0.1:7233") as proxy:
        config = st.ConnectionConfig(address=proxy.address)
        ...
        proxy.reset()        # RST every current connection; new ones pass
        proxy.blackhole()    # swallow every byte both ways, until heal()
        proxy.latency(0.2)   # delay every chunk, until heal()
        proxy.heal()

For Trio test code: importing this module imports trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ._faultproxy import FaultProxy

__all__ = ["FaultProxy", "open_fault_proxy"]


@asynccontextmanager
async def open_fault_proxy(upstream: str, *, listen: str = "127.0.0.1:0") -> AsyncIterator[FaultProxy]:
    """A FaultProxy to `upstream`, listening (on loopback) for the duration of the block."""
    proxy = FaultProxy(upstream, listen=listen)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel(reason="fault proxy closing")
