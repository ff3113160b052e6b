"""Helpers of the TUI pilot tests: bounded runs and waiting for the screen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from tui.screens.dashboard import DashboardScreen


def run(coro: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    """Run an async test body on asyncio (Textual's loop), bounded in time."""
    asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(
    pilot: Pilot[Any], check: Callable[[], object], limit: float = 5, what: str = ""
) -> None:
    """Pause the pilot until `check()` is true. How soon is not asserted:
    bench/bench_tui.py measures it.

    Raises:
        AssertionError: when it is still false after `limit` seconds.
    """
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what or check}")
        await pilot.pause(0.01)


def dashboard(pilot: Pilot[Any]) -> DashboardScreen:
    """The dashboard screen (the bottom of the stack)."""
    for screen in pilot.app.screen_stack:
        if isinstance(screen, DashboardScreen):
            return screen
    raise AssertionError(f"no dashboard in {pilot.app.screen_stack}")


def rows(pilot: Pilot[Any]) -> dict[str, list[str]]:
    """The dashboard's rows by container name, as text."""
    table = dashboard(pilot).query_one("#containers", DataTable)
    out = {}
    for i in range(table.row_count):
        cells = [str(c) for c in table.get_row_at(i)]
        out[cells[0]] = cells
    return out


class Tmux:
    """`lxpy-tui` in a real terminal: a tmux server of its own, one pane.

    Args:
        command: the shell command the pane runs.
        size: columns and lines of the terminal.
    """

    def __init__(self, command: str, size: tuple[int, int] = (100, 30)) -> None:
        self.server = f"lxpy-tui-test-{os.getpid()}-{id(self)}"
        self._tmux(
            "new-session", "-d", "-s", "tui", "-x", str(size[0]), "-y", str(size[1]), command
        )
        # Keep the pane (and what it shows) when the app exits.
        self._tmux("set-option", "-t", "tui", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        res = subprocess.run(
            ["tmux", "-L", self.server, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "TERM": "xterm-256color"},
        )
        if res.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "tui", *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "tui")

    def wait_for(self, check: Callable[[str], bool], timeout: float = 10, what: str = "") -> str:
        """The screen once `check(screen)` holds.

        Raises:
            AssertionError: with the last screen, after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=10)
        # The server leaves its socket file behind.
        tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"
        Path(tmpdir, f"tmux-{os.getuid()}", self.server).unlink(missing_ok=True)


def row_of(screen: str, name: str) -> str:
    """The line of the dashboard that shows container `name` ('' if none)."""
    for line in screen.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return line
    return ""
