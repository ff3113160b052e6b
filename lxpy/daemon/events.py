"""The event bus: lifecycle changes and operation updates, fanned out to
subscribers (the /1.0/events streams).

Publishing never waits: each subscriber has a bounded channel, and one that
falls behind is dropped (its channel closed, so its stream ends) rather than
slowing the daemon down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import trio

log = logging.getLogger("lxpyd.events")

EVENT_TYPES = ("lifecycle", "operation")


def now_iso() -> str:
    """The current UTC time as ISO 8601 (`2026-11-27T20:00:00Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Subscription:
    def __init__(
        self,
        bus: EventBus,
        send: trio.MemorySendChannel[dict[str, object]],
        channel: trio.MemoryReceiveChannel[dict[str, object]],
        types: frozenset[str],
    ) -> None:
        self._bus = bus
        self.send = send
        self.channel = channel
        self.types = types

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if self in self._bus._subs:
            self._bus._subs.remove(self)
        self.send.close()
        self.channel.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish events to every subscriber that asked for their type."""

    def __init__(self, buffer: int = 1024) -> None:
        self.buffer = buffer
        self._subs: list[Subscription] = []

    def subscribe(self, types: Iterable[str] | None = None) -> Subscription:
        """Start receiving events of `types` (all types when None) at once.

        Use it as a context manager, or close it. Iterating its channel ends
        when the subscriber is dropped for falling behind.
        """
        send, recv = trio.open_memory_channel[dict[str, object]](self.buffer)
        sub = Subscription(self, send, recv, frozenset(types or EVENT_TYPES))
        self._subs.append(sub)
        return sub

    def publish(self, event: dict[str, object]) -> None:
        """Send `event` (with `type`) to its subscribers; never blocks."""
        for sub in list(self._subs):
            if event["type"] not in sub.types:
                continue
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("dropping an event subscriber that is %d events behind", self.buffer)
                self._subs.remove(sub)
                sub.send.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subs.remove(sub)

    def lifecycle(self, action: str, resource: str, data: dict[str, object] | None = None) -> None:
        """Publish a lifecycle event (`container-created` on `containers/web`, ...)."""
        log.info("%s %s%s", action, resource, f" {data}" if data else "")
        self.publish(
            {
                "type": "lifecycle",
                "timestamp": now_iso(),
                "action": action,
                "resource": resource,
                "data": data or {},
            }
        )

    def operation(self, op: dict[str, object]) -> None:
        """Publish the new state of an operation."""
        self.publish({"type": "operation", "timestamp": now_iso(), "operation": op})
