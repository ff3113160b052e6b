"""Start, stop, restart, freeze, shell and console from the TUI, against a
real lxpyd: the running-container endpoints of docs/api.md ("Running
containers"), in Textual's pilot and in a real terminal."""

from __future__ import annotations

import asyncio

import pytest

from lxpy.api.client import Client
from tests.conftest import VENV_BIN, Daemon
from tests.tui.helpers import Tmux, dashboard, row_of, rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.modals import ConfirmScreen

pytestmark = pytest.mark.integration


def _state(pilot: object, name: str) -> str:
    return rows(pilot)[name][1] if name in rows(pilot) else ""  # type: ignore[arg-type]


def test_lifecycle_keys(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "box")
    client = Client(daemon.socket, timeout=60)

    async def body() -> None:
        app = LxpyApp(str(daemon.socket), stats_interval=1.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: _state(pilot, "box") == "STOPPED", what="fill")

            # A state change made elsewhere shows (how soon: bench_tui.py,
            # "request -> row updated").
            await asyncio.to_thread(client.request, "POST", "/1.0/containers/box/start")
            await wait_until(pilot, lambda: _state(pilot, "box") == "RUNNING", 10, "RUNNING")
            # The full object (started_at, hence the uptime) follows.
            await wait_until(pilot, lambda: rows(pilot)["box"][6] != "-", 2, "uptime")

            # Stop asks first; then the row follows the daemon.
            await pilot.press("x")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: _state(pilot, "box") == "STOPPED", 40, "stop")
            assert client.container("box")["state"] == "STOPPED"

            await pilot.press("s")
            await wait_until(pilot, lambda: _state(pilot, "box") == "RUNNING", 20, "start")
            await pilot.press("f")
            await wait_until(pilot, lambda: _state(pilot, "box") == "FROZEN", 10, "freeze")
            await pilot.press("f")
            await wait_until(pilot, lambda: _state(pilot, "box") == "RUNNING", 10, "thaw")
            pid = client.container("box")["init_pid"]
            await pilot.press("r")
            await wait_until(
                pilot,
                lambda: client.container("box")["init_pid"] not in (None, pid),
                40,
                "restart",
            )
            await wait_until(pilot, lambda: _state(pilot, "box") == "RUNNING", 10)
            # Destroying a running container says so and stops it.
            dashboard(pilot).select("box")
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "running" in str(app.screen.query_one(".question").render())
            await pilot.press("y")
            await wait_until(pilot, lambda: "box" not in rows(pilot), 40, "destroy")

    run(body(), timeout=150)


def test_start_and_stop_in_a_real_terminal(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "one")
    term = Tmux(f"{VENV_BIN / 'lxpy-tui'} --socket {daemon.socket}", size=(80, 24))
    try:
        term.wait_for(lambda s: "STOPPED" in row_of(s, "one"), what="the table")
        term.keys("s")
        term.wait_for(lambda s: "RUNNING" in row_of(s, "one"), 20, "one to run")
        # The shell: the TUI hands the terminal over and is back on exit.
        term.keys("e")
        term.wait_for(lambda s: not row_of(s, "one"), 10, "the shell")
        term.keys("echo tui-$((6*7))", "Enter")
        term.wait_for(lambda s: "tui-42" in s, 10, "the shell's output")
        term.keys("exit", "Enter")
        term.wait_for(lambda s: "RUNNING" in row_of(s, "one"), 10, "the TUI to come back")
        # The console, left with its detach keys.
        term.keys("c")
        term.wait_for(lambda s: not row_of(s, "one"), 10, "the console")
        term.keys("C-a", "q")
        term.wait_for(lambda s: "RUNNING" in row_of(s, "one"), 10, "the TUI to come back")
        term.keys("x")
        term.wait_for(lambda s: "Stop container one?" in s, what="the confirmation")
        term.keys("y")
        term.wait_for(lambda s: "STOPPED" in row_of(s, "one"), 40, "one to stop")
    finally:
        term.close()
