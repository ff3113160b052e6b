"""The detail screen against a real lxpyd: the dashboard's lifecycle keys
work there too, and config edits meet the same checks as `lxpy config set`."""

from __future__ import annotations

from typing import Any

import pytest
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label

from lxpy.api.client import Client
from tests.conftest import Daemon
from tests.tui.helpers import rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.detail import DetailScreen
from tui.screens.modals import ConfirmScreen

pytestmark = pytest.mark.integration

SIZE = (100, 30)
MIB = 2**20


async def _detail(pilot: Any, name: str) -> DetailScreen:
    await wait_until(pilot, lambda: name in rows(pilot), what="the table")
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen))
    screen = pilot.app.screen
    await wait_until(pilot, lambda: bool(screen.ct), what="the container")
    return screen


def test_lifecycle_keys_on_the_detail_screen(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "box")
    client = Client(daemon.socket, timeout=60)

    def state() -> str:
        return str(client.container("box")["state"])

    async def body() -> None:
        app = LxpyApp(str(daemon.socket), stats_interval=1.0)
        async with app.run_test(size=SIZE) as pilot:
            screen = await _detail(pilot, "box")

            async def shows(want: str, limit: float = 20) -> None:
                await wait_until(pilot, lambda: screen.ct.get("state") == want, limit, want)

            await pilot.press("s")
            await shows("RUNNING")
            assert state() == "RUNNING"
            await pilot.press("f")
            await shows("FROZEN")
            assert state() == "FROZEN"
            await pilot.press("f")
            await shows("RUNNING")
            pid = client.container("box")["init_pid"]
            await pilot.press("r")
            await wait_until(
                pilot, lambda: screen.ct.get("init_pid") not in (None, pid), 40, "restart"
            )
            await pilot.press("x")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "Stop container box?" in str(app.screen.query_one(".question").render())
            await pilot.press("y")
            await shows("STOPPED", 40)
            assert state() == "STOPPED"
            assert app.screen is screen

    run(body(), timeout=150)


def test_config_edits_meet_the_checks_of_config_set(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "box")
    daemon.cli("start", "box")
    refused = daemon.cli("config", "set", "box", "limits.memory", "lots", check=False)
    assert refused.returncode != 0
    message = refused.stderr.splitlines()[0].removeprefix("error: ")
    client = Client(daemon.socket, timeout=30)

    async def body() -> None:
        app = LxpyApp(str(daemon.socket), stats_interval=1.0)
        async with app.run_test(size=SIZE) as pilot:
            screen = await _detail(pilot, "box")
            await pilot.press("a")
            await wait_until(pilot, lambda: isinstance(app.screen, ModalScreen))
            edit = app.screen
            await pilot.press(*"limits.memory", "enter")
            help = str(edit.query_one("#help", Label).render())
            assert "applies at once" in help
            await pilot.press(*"lots", "enter")
            problem = edit.query_one("#problem", Label)
            await wait_until(pilot, lambda: message in str(problem.render()), what=message)
            assert app.screen is edit
            assert "limits.memory" not in client.container("box")["config"]

            edit.query_one("#value", Input).value = "64MiB"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen is screen, what="the dialog to close")
            config = screen.query_one("#config", DataTable)
            await wait_until(
                pilot,
                lambda: (
                    "limits.memory"
                    in [str(r[0]) for r in (config.get_row_at(i) for i in range(config.row_count))]
                ),
                what="the new row",
            )
            ct = client.container("box")
            assert ct["config"]["limits.memory"] == "64MiB"
            assert ct["stats"]["memory_limit_bytes"] == 64 * MIB

    run(body(), timeout=90)
