"""The first-run panel: with no container, the dashboard offers to build a
template and to create a container, as buttons and keys that do it."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widget import Widget
from textual.widgets import Button, Input, Label, ProgressBar, Select

from lxpy.api.client import Client
from tests.conftest import Daemon
from tests.tui.fakeapi import CONTAINERS, NOW, FakeLxpyd
from tests.tui.helpers import dashboard, rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.create import CreateScreen

SIZE = (100, 30)


def _welcome(pilot: Any) -> Widget:
    return dashboard(pilot).query_one("#welcome")


def test_shown_while_there_is_no_container(tmp_path: Any) -> None:
    fake = FakeLxpyd(tmp_path / "fake.sock", containers=[]).start()

    async def body() -> None:
        app = LxpyApp(str(fake.socket))
        async with app.run_test(size=SIZE) as pilot:
            welcome = _welcome(pilot)
            await wait_until(pilot, lambda: welcome.display, what="the first-run panel")
            table = dashboard(pilot).query_one("#containers")
            assert not table.display
            # The built template is picked, so creating is the next step.
            select = welcome.query_one("#welcome-template", Select)
            await wait_until(pilot, lambda: select.value == "busybox", what="busybox")
            create = welcome.query_one("#create", Button)
            await wait_until(pilot, lambda: app.focused is create, what="the create button")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, CreateScreen))
            template = app.screen.query_one("#template", Select)
            await wait_until(pilot, lambda: template.value == "busybox", what="busybox picked")
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is dashboard(pilot))

            # The first container made elsewhere: the table takes over.
            fake.containers.append(dict(CONTAINERS[0]))
            fake.emit(
                {
                    "type": "lifecycle",
                    "timestamp": NOW,
                    "action": "container-created",
                    "resource": "containers/web",
                    "data": {},
                }
            )
            await wait_until(pilot, lambda: "web" in rows(pilot), what="the new row")
            assert table.display and not welcome.display
            await wait_until(pilot, lambda: app.focused is table, what="the table's focus")

    try:
        run(body())
    finally:
        fake.stop()


@pytest.mark.integration
def test_builds_a_template_then_creates_the_first_container(daemon: Daemon) -> None:
    client = Client(daemon.socket, timeout=60)
    if client.template("busybox")["built"]:
        daemon.cli("template", "delete", "busybox")

    async def body() -> None:
        app = LxpyApp(str(daemon.socket), stats_interval=1.0)
        async with app.run_test(size=SIZE) as pilot:
            welcome = _welcome(pilot)
            await wait_until(pilot, lambda: welcome.display, what="the first-run panel")
            select = welcome.query_one("#welcome-template", Select)
            await wait_until(pilot, lambda: select.value == "busybox", what="busybox")
            progress = welcome.query_one("#progress", ProgressBar)
            assert not progress.display
            await pilot.press("b")
            await wait_until(pilot, lambda: progress.display, what="the progress bar")
            stage = welcome.query_one("#stage", Label)
            await wait_until(
                pilot, lambda: "busybox is built" in str(stage.render()), 60, "the build"
            )
            assert progress.percentage == 1.0
            assert client.template("busybox")["built"]
            # Building done, the next step has the focus.
            await wait_until(
                pilot, lambda: app.focused is welcome.query_one("#create", Button), what="focus"
            )
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, CreateScreen))
            app.screen.query_one("#name", Input).focus()
            await pilot.press(*"first", "ctrl+s")
            await wait_until(pilot, lambda: "first" in rows(pilot), 20, "the first container")
            assert not welcome.display
            assert [c["name"] for c in client.containers()] == ["first"]

    run(body(), timeout=120)
