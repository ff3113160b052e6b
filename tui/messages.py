"""Messages the app's live feed sends to every screen on the stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


@dataclass
class Connected(Message):
    """lxpyd answers (again): its info and the full container list."""

    info: dict[str, Any]
    containers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Disconnected(Message):
    """lxpyd cannot be reached; the feed keeps trying."""

    reason: str
    hint: str | None = None


@dataclass
class Lifecycle(Message):
    """One lifecycle event (`container-state`, `container-created`, ...)."""

    event: dict[str, Any]

    @property
    def action(self) -> str:
        return str(self.event.get("action", ""))

    @property
    def container(self) -> str | None:
        """The container the event is about, or None for other resources."""
        kind, _, name = str(self.event.get("resource", "")).partition("/")
        return name if kind == "containers" and name else None


@dataclass
class OperationUpdate(Message):
    """An operation event: progress or end of a long task."""

    operation: dict[str, Any]
