"""A real lxpyd's lifecycle events, collected while a test runs."""

from __future__ import annotations

import json
import threading
from typing import Any

from lxpy.api.client import Client
from tests.conftest import Daemon, wait_for


class Events:
    """The daemon's lifecycle events, collected by a thread from the moment
    the constructor returns: by then the answer's head has come, and lxpyd
    subscribes a stream before it sends that, so no event of what the test
    does next is missed."""

    def __init__(self, d: Daemon) -> None:
        self.items: list[dict[str, Any]] = []
        self._resp = Client(d.socket).open("GET", "/1.0/events", None, {"type": "lifecycle"})
        assert self._resp.status == 200
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        pending = b""
        try:
            for chunk in self._resp.chunks():
                *lines, pending = (pending + chunk).split(b"\n")
                self.items += [json.loads(line) for line in lines if line.strip()]
        except Exception:
            pass

    def actions(self, name: str, action: str) -> list[dict[str, Any]]:
        """The events `action` of container `name` so far."""
        return [
            e
            for e in list(self.items)
            if e["action"] == action and e["resource"] == f"containers/{name}"
        ]

    def states(self, name: str) -> list[tuple[str, str]]:
        """Container `name`'s state changes so far, as (old, new)."""
        return [(e["data"]["old"], e["data"]["new"]) for e in self.actions(name, "container-state")]

    def wait_state(self, name: str, new: str, count: int = 1, timeout: float = 15) -> None:
        """Until container `name` has become `new` `count` times."""
        wait_for(
            lambda: sum(1 for _o, n in self.states(name) if n == new) >= count,
            timeout,
            f"{name} to become {new} (x{count})",
        )
