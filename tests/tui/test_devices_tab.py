"""The detail screen's Devices tab against a real lxpyd: a device added in
the dialog meets the daemon's checks (a refusal is shown in place and
nothing changes), shows in the tab, and is removed after a confirmation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Label

from lxpy.api.client import Client
from tests.conftest import Daemon
from tests.tui.helpers import rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.detail import DetailScreen
from tui.screens.devices import DeviceAddScreen
from tui.screens.modals import ConfirmScreen

pytestmark = pytest.mark.integration

SIZE = (100, 30)


def _cells(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def test_devices_are_added_and_removed_in_the_devices_tab(daemon: Daemon, tmp_path: Path) -> None:
    daemon.cli("create", "-t", "busybox", "box")
    share = tmp_path / "share"
    share.mkdir()
    client = Client(daemon.socket, timeout=30)

    async def body() -> None:
        app = LxpyApp(str(daemon.socket), stats_interval=1.0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "box" in rows(pilot), what="the table")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen))
            screen = app.screen
            assert isinstance(screen, DetailScreen)
            await wait_until(pilot, lambda: bool(screen.ct), what="the container")
            screen.query_one("#tabs").active = "tab-devices"  # type: ignore[attr-defined]
            await pilot.pause()
            assert screen.query_one("#no-devices").display

            await pilot.press("a")
            await wait_until(pilot, lambda: isinstance(app.screen, DeviceAddScreen))
            dialog = app.screen
            await pilot.press(*"www", "enter", "enter")
            keys = dialog.query_one("#keys", Input)
            keys.value = f"source={tmp_path}/none path=/srv/www"
            await pilot.press("enter")
            problem = dialog.query_one("#problem", Label)
            await wait_until(
                pilot, lambda: "does not exist" in str(problem.render()), what="the refusal"
            )
            assert app.screen is dialog
            assert client.devices("box") == []

            keys.value = f"source={share} path=/srv/www readonly=true"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen is screen, what="the dialog to close")
            table = screen.query_one("#devices", DataTable)
            await wait_until(pilot, lambda: table.row_count == 1, what="the new row")
            assert _cells(table) == [
                ["www", "disk", "no", f"path=/srv/www readonly=true source={share}"]
            ]
            assert client.device("box", "www")["config"]["readonly"] == "true"

            table.focus()
            await pilot.press("delete")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "Remove device www from box?" in str(app.screen.query_one(".question").render())
            await pilot.press("y")
            await wait_until(pilot, lambda: client.devices("box") == [], what="the removal")
            await wait_until(
                pilot, lambda: bool(screen.query_one("#no-devices").display), what="empty tab"
            )

    run(body(), timeout=90)
