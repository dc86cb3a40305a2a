# The event hub: fans every event record out to synchronous hooks (logging, metrics, state files) and
# to async subscribers (Runtime.events(), the connection child's fast paths). Rule: emit() never blocks
# and never raises; a subscriber that falls behind loses the oldest events, counted, never the runtime.
from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import trio

from .._core._events import Event, EventHook

__all__ = ["EventHub", "Subscription"]

logger = logging.getLogger("stigmer_trio.events")


class Subscription:
    """A bounded queue of events for one async reader."""

    def __init__(self, size: int) -> None:
        self._queue: deque[Event] = deque(maxlen=size)
        self._ready = trio.Event()
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()

    async def receive(self) -> Event:
        while not self._queue:
            self._ready = trio.Event()
            await self._ready.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()


class EventHub:
    """One place every event goes through."""

    def __init__(self, hooks: tuple[EventHook, ...] = ()) -> None:
        self._hooks = list(hooks)
        self._subscriptions: list[Subscription] = []

    def add_hook(self, hook: EventHook) -> None:
        """Add a hook (once: a restarted child re-adding its hook does not get events twice)."""
        if hook not in self._hooks:
            self._hooks.append(hook)

    def emit(self, event: Event) -> None:
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("event hook %r failed on %r", hook, event)
        for subscription in self._subscriptions:
            subscription._put(event)

    __call__ = emit

    @contextmanager
    def subscribe(self, size: int = 1000) -> Iterator[Subscription]:
        subscription = Subscription(size)
        self._subscriptions.append(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.remove(subscription)
