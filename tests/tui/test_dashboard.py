"""The app driven by Textual's pilot against a real lxpyd on a test pool."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Input, Label, Log, ProgressBar, Static

from lxpy.api.client import Client
from tests.conftest import Daemon, start_daemon, stop_daemon
from tests.tui.helpers import dashboard, rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.create import CreateScreen
from tui.screens.detail import DetailScreen
from tui.screens.modals import ConfirmScreen, PromptScreen

pytestmark = pytest.mark.integration

SIZE = (100, 30)


def _app(daemon: Daemon) -> LxpyApp:
    return LxpyApp(str(daemon.socket), stats_interval=1.0, retry_interval=0.2)


def _cli(daemon: Daemon, *args: str) -> asyncio.Future[object]:
    # The CLI blocks: run it off the app's loop so the feed keeps flowing.
    return asyncio.ensure_future(asyncio.to_thread(daemon.cli, *args))


def test_table_fills_and_follows_changes(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "alpha")
    daemon.cli("create", "-t", "busybox", "beta")

    async def body() -> None:
        app = _app(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: set(rows(pilot)) == {"alpha", "beta"}, what="fill")
            assert rows(pilot)["alpha"][1:4] == ["STOPPED", "busybox", "-"]

            # From lxpyd's event, not a refresh: how soon is bench_tui.py's
            # figure ("request -> new row shown").
            await _cli(daemon, "create", "-t", "busybox", "gamma")
            await wait_until(pilot, lambda: "gamma" in rows(pilot), what="gamma")
            await _cli(daemon, "rename", "beta", "delta")
            await wait_until(
                pilot,
                lambda: "delta" in rows(pilot) and "beta" not in rows(pilot),
                what="rename",
            )
            await _cli(daemon, "destroy", "alpha")
            await wait_until(pilot, lambda: "alpha" not in rows(pilot), what="delete")
            assert set(rows(pilot)) == {"delta", "gamma"}

    run(body())


def test_actions_reach_the_daemon(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "web")
    client = Client(daemon.socket, timeout=30)

    async def body() -> None:
        app = _app(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "web" in rows(pilot), what="fill")
            # Snapshot, with a name typed into the prompt.
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
            await pilot.press(*"s1", "enter")
            await wait_until(pilot, lambda: client.snapshots("web") != [], what="snapshot s1")
            assert [s["name"] for s in client.snapshots("web")] == ["s1"]
            # Clone: the copy shows up as a row of its own.
            await pilot.press("l")
            await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
            await pilot.press(*"web2", "enter")
            await wait_until(pilot, lambda: "web2" in rows(pilot), what="clone row")
            assert client.container("web2")["template"] == "busybox"
            # Destroy asks first, naming the container; "no" keeps it.
            dashboard(pilot).select("web2")
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "web2" in str(app.screen.query_one(".question", Label).render())
            await pilot.press("n")
            await pilot.pause(0.2)
            assert "web2" in rows(pilot)
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: "web2" not in rows(pilot), what="destroy")
            assert [c["name"] for c in client.containers()] == ["web"]

    run(body())


def test_create_screen_builds_validates_and_creates(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "taken")
    duplicate = daemon.cli("create", "-t", "busybox", "taken", check=False)
    daemon_message = duplicate.stderr.splitlines()[0].removeprefix("error: ")
    # A template that is not built yet, so the create screen builds it.
    daemon.cli("template", "delete", "busybox")

    async def body() -> None:
        app = _app(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "taken" in rows(pilot), what="fill")
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, CreateScreen))
            screen = app.screen
            problem = screen.query_one("#problem", Label)
            progress = screen.query_one("#progress", ProgressBar)
            # Checked as it is typed.
            await pilot.press(*"9bad")
            await wait_until(pilot, lambda: "invalid container name" in str(problem.render()))
            # What only the daemon knows comes back as its message.
            screen.query_one("#name", Input).value = ""
            await pilot.press(*"taken")
            await pilot.press("ctrl+s")
            await wait_until(
                pilot, lambda: daemon_message in str(problem.render()), what=daemon_message
            )
            screen.query_one("#name", Input).value = ""
            await pilot.press(*"fresh", "ctrl+s")
            await wait_until(pilot, lambda: "fresh" in rows(pilot), limit=20, what="fresh")
            assert not isinstance(app.screen, CreateScreen)
            assert progress.percentage == 1.0
            assert dashboard(pilot).selected() == "fresh"

    run(body(), timeout=40)
    assert Client(daemon.socket).template("busybox")["built"]


def test_detail_screen_snapshots(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "box", "--set", "hostname=boxhost")
    daemon.cli("snapshot", "create", "box", "first")
    # Running: its restore below is a restart, and the question says so.
    daemon.cli("start", "box")
    client = Client(daemon.socket, timeout=30)

    async def body() -> None:
        app = _app(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "box" in rows(pilot), what="fill")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen))
            screen = app.screen
            config = screen.query_one("#config")
            await wait_until(pilot, lambda: config.row_count == 1, what="config")  # type: ignore[attr-defined]
            snaps = screen.query_one("#snapshots")
            await wait_until(pilot, lambda: snaps.row_count == 1, what="snapshots")  # type: ignore[attr-defined]
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
            await pilot.press("enter")  # empty: the daemon names it
            await wait_until(pilot, lambda: snaps.row_count == 2, what="second snapshot")  # type: ignore[attr-defined]
            events = screen.query_one("#events", Log)
            await wait_until(
                pilot,
                lambda: "snapshot-created" in "\n".join(events.lines),
                what="event",
            )
            # Restore the first (confirmed), then delete it (confirmed).
            snaps.move_cursor(row=0)  # type: ignore[attr-defined]
            await pilot.press("o")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "It is stopped, restored and started again." in app.screen.question  # type: ignore[attr-defined]
            await pilot.press("y")
            await wait_until(
                pilot,
                lambda: "snapshot-restored" in "\n".join(events.lines),
                what="restore",
            )
            snaps.move_cursor(row=0)  # type: ignore[attr-defined]
            await pilot.press("delete")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: snaps.row_count == 1, what="delete")  # type: ignore[attr-defined]
            assert [s["name"] for s in client.snapshots("box")] == ["snap0"]
            assert client.container("box")["state"] == "RUNNING"
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is dashboard(pilot))

    run(body())


def test_daemon_loss_and_return(daemon: Daemon, tmp_path: object) -> None:
    daemon.cli("create", "-t", "busybox", "keep")

    async def body() -> None:
        app = _app(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "keep" in rows(pilot), what="fill")
            banner = dashboard(pilot).query_one("#banner", Static)
            assert not banner.display or not str(banner.render()).strip()

            await asyncio.to_thread(stop_daemon, daemon)
            await wait_until(pilot, lambda: "not reachable" in str(banner.render()), what="banner")
            assert banner.display and dashboard(pilot).has_class("-offline")
            await pilot.press("d")  # actions are off while it is gone
            assert not isinstance(app.screen, ConfirmScreen)

            back = await asyncio.to_thread(
                start_daemon,
                daemon.root,
                daemon.socket,
                daemon.log,
                settings=(daemon.root.parent / f"{daemon.root.name}-lxpyd.toml").read_text(),
            )
            daemon.proc = back.proc  # so the fixture stops the new one
            await wait_until(pilot, lambda: not dashboard(pilot).has_class("-offline"), 10)
            await _cli(daemon, "create", "-t", "busybox", "after")
            await wait_until(pilot, lambda: "after" in rows(pilot), what="after")

    run(body(), timeout=60)
