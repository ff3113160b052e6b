"""The `lxpy-tui` application: the live feed from lxpyd and the screen stack.

The app owns the connection: one worker follows GET /1.0/events, lists the
containers each time it (re)connects, and hands every event to each screen
on the stack as a message. Screens own what they show.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from lxpy.api.aclient import AsyncClient
from lxpy.errors import LxpyError
from tui.inventory import Clock, utcnow
from tui.messages import Connected, Disconnected, Lifecycle, OperationUpdate
from tui.screens.dashboard import DashboardScreen


class LxpyApp(App[None]):
    """A live console for the containers of one lxpyd.

    Args:
        socket_path: lxpyd's socket; None for $LXPY_SOCKET or the default.
        clock: the wall clock uptimes are measured on (fixed in snapshot tests).
        stats_interval: seconds between full refreshes (stats, uptimes).
        retry_interval: seconds between attempts to reach a missing lxpyd.
    """

    CSS_PATH = "app.tcss"
    TITLE = "lxpy"
    BINDINGS = [Binding("q", "quit", "quit")]
    # Narrow terminals drop the footer's palette entry (ctrl+p still works)
    # so that the container actions fit in 80 columns.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    def __init__(
        self,
        socket_path: str | None = None,
        clock: Clock = utcnow,
        stats_interval: float = 2.0,
        retry_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.client = AsyncClient(socket_path, timeout=30)
        self.clock = clock
        self.stats_interval = stats_interval
        self.retry_interval = retry_interval
        self.connected = False
        self.server_info: dict[str, Any] = {}
        # Recent events, so a detail screen opened later can show its history.
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.sub_title = self.client.socket_path

    def on_mount(self) -> None:
        self.push_screen(DashboardScreen())
        self.follow()

    # -- the live feed ---------------------------------------------------------

    def broadcast(self, message: Connected | Disconnected | Lifecycle | OperationUpdate) -> None:
        """Send `message` to every screen on the stack (modals included)."""
        for screen in self.screen_stack:
            screen.post_message(message)

    @work(exclusive=True, group="feed")
    async def follow(self) -> None:
        """Follow lxpyd for as long as the app runs, reconnecting when it is back."""
        announced: str | None = None
        retried = True
        while True:
            try:
                # Subscribe first, then list: an event that happens between
                # the two is applied on top of the list, never lost.
                async with await self.client.events(["lifecycle", "operation"]) as stream:
                    info = await self.client.server_info()
                    cts = await self.client.containers(stats=True)
                    self.server_info = info
                    self.connected = True
                    announced = None
                    retried = False
                    self.broadcast(Connected(info, cts))
                    async for event in stream:
                        self._dispatch(event)
                # The stream ended: lxpyd stopped, or dropped us for falling
                # behind. Try once at once before saying it is gone.
                reason, hint = f"lxpyd at {self.client.socket_path} closed the event stream", None
                if not retried:
                    retried = True
                    continue
            except LxpyError as e:
                reason, hint = e.message, e.hint
            if self.connected or announced != reason:
                self.connected = False
                announced = reason
                self.broadcast(Disconnected(reason, hint))
            await asyncio.sleep(self.retry_interval)

    def _dispatch(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        self.recent_events.append(event)
        if event.get("type") == "lifecycle":
            self.broadcast(Lifecycle(event))
        elif event.get("type") == "operation" and isinstance(event.get("operation"), dict):
            self.broadcast(OperationUpdate(event["operation"]))

    def events_for(self, name: str) -> list[dict[str, Any]]:
        """The recent lifecycle events of container `name`, oldest first."""
        resource = f"containers/{name}"
        return [e for e in self.recent_events if e.get("resource") == resource]

    # -- handing the terminal over ---------------------------------------------

    def run_cli(self, *args: str) -> int:
        """Suspend the TUI and run `lxpy ARGS` on the terminal; its exit status.

        The CLI's console and exec keep one implementation of the framed
        stream; the app comes back when the command ends (detach, exit).
        """
        cmd = [sys.executable, "-m", "lxpy.cli", "--socket", self.client.socket_path, *args]
        with self.suspend():
            return subprocess.run(cmd, check=False).returncode

    # -- the command palette ---------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        provide = getattr(screen, "palette_commands", None)
        if provide is not None:
            yield from provide()
        yield from super().get_system_commands(screen)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lxpy-tui [--socket PATH]`; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="lxpy-tui",
        description="A live terminal console for lxpyd's containers.",
        epilog=(
            "The footer lists the keys that apply to the selected container "
            "(ctrl+p: every command). With no container yet, the dashboard "
            "offers to build a template (b) and create a container (n). The "
            "detail screen (enter) has the same start, stop, restart, freeze, "
            "console and shell keys as the dashboard; on its Config tab, enter "
            "edits a key, a sets another and u unsets one, checked by lxpyd as "
            "`lxpy config set` is; on its Snapshots tab, p takes a snapshot, o "
            "restores and delete deletes one."
        ),
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="lxpyd's socket (default: $LXPY_SOCKET, else /run/lxpy/lxpy.sock)",
    )
    args = parser.parse_args(argv)
    LxpyApp(args.socket).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
