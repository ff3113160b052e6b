"""The detail screen against the fixed-data lxpyd stand-in: values as the
CLI prints them, the owner, the console as a terminal shows it, the empty
Events tab, config edits checked by the daemon's rules, and which keys each
tab offers."""

from __future__ import annotations

import subprocess
from typing import Any

from textual.pilot import Pilot
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, Static

from lxpy.errors import LxpyError
from lxpy.model.config import parse_value
from tests.conftest import VENV_BIN
from tests.tui.fakeapi import NOW, FakeLxpyd
from tests.tui.helpers import dashboard, rows, run, wait_until
from tui.app import LxpyApp
from tui.screens.detail import DetailScreen

SIZE = (100, 30)


def shown(widget: Widget) -> list[str]:
    """The lines `widget` draws (scrollbars aside), as text."""
    return [widget.render_line(y).text.rstrip() for y in range(widget.size.height)]


def table_rows(table: DataTable[Any]) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in (table.get_row_at(i) for i in range(table.row_count))}


async def _detail_of(pilot: Pilot[Any], name: str) -> DetailScreen:
    app = pilot.app
    await wait_until(pilot, lambda: name in rows(pilot), what="the table")
    dashboard(pilot).select(name)
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen), what="details")
    screen = app.screen
    assert isinstance(screen, DetailScreen)
    await wait_until(pilot, lambda: bool(screen.ct), what="the container")
    return screen


async def _tab(pilot: Pilot[Any], name: str, tab: str) -> DetailScreen:
    screen = await _detail_of(pilot, name)
    screen.query_one("#tabs").active = tab  # type: ignore[attr-defined]
    await pilot.pause()
    return screen


def _cli_config(fake: FakeLxpyd, name: str) -> dict[str, str]:
    out = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(fake.socket), "config", "show", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(line.split(" = ", 1) for line in out.splitlines())


def test_config_values_read_as_the_cli_prints_them(fake_lxpyd: FakeLxpyd) -> None:
    cli = _cli_config(fake_lxpyd, "web")
    assert cli["network"] == "lxpybr0" and cli["boot.autostart"] == "true"

    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket))
        async with app.run_test(size=SIZE) as pilot:
            screen = await _detail_of(pilot, "web")
            config = screen.query_one("#config", DataTable)
            await wait_until(pilot, lambda: config.row_count == len(cli), what="config rows")
            assert table_rows(config) == cli
            text = "\n".join(shown(config))
            assert "lxpybr0" in text and '["lxpybr0"]' not in text
            # The owner, as `lxpy info` says it.
            summary = str(screen.query_one("#summary", Static).render())
            assert "owner: root (uid 0, admin)" in summary

    run(body())


def test_console_tab_shows_what_a_terminal_shows(fake_lxpyd: FakeLxpyd) -> None:
    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket))
        async with app.run_test(size=SIZE) as pilot:
            screen = await _tab(pilot, "web", "tab-console")
            console = screen.query_one("#console")
            await wait_until(pilot, lambda: "web login:" in "\n".join(shown(console)))
            lines = shown(console)
            text = "\n".join(lines)
            # No escape sequence reaches the terminal: Textual would count it
            # as text while the terminal acts on it, shifting the line.
            assert "\x1b" not in text and "\r" not in text and "\ufffd" not in text
            assert "[  OK  ] Started unit8.service - Unit 8." in lines
            # The status line redrawn after a CR shows its last state.
            assert "[  OK  ] Reached target network.target." in lines
            assert "A start job is running" not in text
            # Long lines wrap at the width: nothing to scroll sideways.
            assert console.max_scroll_x == 0
            assert all(len(line) <= console.size.width for line in lines)

    run(body())


def test_console_text_keeps_colours_and_drops_controls() -> None:
    from tui.widgets import console_text

    log = "a \x1b[1mbold\x1b[0m!\r\r\n[\x1b[0;32m  OK  \x1b[0m] x\r\r\nold\rnew\x1b[K\x07\r\nlast"
    text = console_text(log, 10)
    assert text.plain.split("\n") == ["a bold!", "[  OK  ] x", "new", "last"]
    styles = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    assert styles == {"bold": "bold", "  OK  ": "color(2)"}
    assert console_text(log, 2).plain == "new\nlast"


def test_events_tab_says_when_there_are_none(fake_lxpyd: FakeLxpyd) -> None:
    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket))
        async with app.run_test(size=SIZE) as pilot:
            screen = await _tab(pilot, "db", "tab-events")
            empty = screen.query_one("#no-events", Static)
            assert empty.display and "no events yet" in str(empty.render())
            fake_lxpyd.emit(
                {
                    "type": "lifecycle",
                    "timestamp": NOW,
                    "action": "container-updated",
                    "resource": "containers/db",
                    "data": {"set": {"limits.memory": "1GiB"}},
                }
            )
            events = screen.query_one("#events")
            await wait_until(pilot, lambda: events.display, what="the event")
            assert not empty.display
            assert "container-updated" in "\n".join(shown(events))

    run(body())


def test_config_edit_is_checked_and_the_error_shown_in_place(fake_lxpyd: FakeLxpyd) -> None:
    try:
        parse_value("limits.memory", "lots")
    except LxpyError as e:
        refusal = e.message
    else:
        raise AssertionError("limits.memory took 'lots'")

    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket))
        async with app.run_test(size=SIZE) as pilot:
            screen = await _detail_of(pilot, "web")
            config = screen.query_one("#config", DataTable)
            await wait_until(pilot, lambda: config.row_count > 0, what="config rows")
            config.move_cursor(row=config.get_row_index("limits.memory"))
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ModalScreen))
            edit = app.screen
            value = edit.query_one("#value", Input)
            assert value.value == "512MiB"
            value.value = "lots"
            await pilot.press("enter")
            problem = edit.query_one("#problem", Label)
            await wait_until(pilot, lambda: refusal in str(problem.render()), what=refusal)
            # Still open, and nothing changed.
            assert app.screen is edit
            assert fake_lxpyd.container("web")["config"]["limits.memory"] == "512MiB"
            value.value = "1GiB"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen is screen, what="the dialog to close")
            assert fake_lxpyd.container("web")["config"]["limits.memory"] == "1GiB"
            await wait_until(pilot, lambda: table_rows(config)["limits.memory"] == "1GiB")

            # A key that is not set yet, picked by name; then unset it again.
            await pilot.press("a")
            await wait_until(pilot, lambda: isinstance(app.screen, ModalScreen))
            await pilot.press(*"limits.processes", "enter", *"200", "enter")
            await wait_until(pilot, lambda: app.screen is screen, what="the dialog to close")
            assert fake_lxpyd.container("web")["config"]["limits.processes"] == 200
            await wait_until(pilot, lambda: "limits.processes" in table_rows(config))
            config.move_cursor(row=config.get_row_index("limits.processes"))
            await pilot.press("u")
            await wait_until(pilot, lambda: "limits.processes" not in table_rows(config))
            assert "limits.processes" not in fake_lxpyd.container("web")["config"]

    run(body())


def test_each_tab_offers_its_own_keys_and_the_list_keys(fake_lxpyd: FakeLxpyd) -> None:
    def offered(screen: DetailScreen) -> set[str]:
        return {b.binding.action for b in screen.active_bindings.values() if b.enabled}

    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket))
        async with app.run_test(size=SIZE) as pilot:
            screen = await _detail_of(pilot, "web")
            await wait_until(pilot, lambda: screen.query_one("#snapshots").display)
            # A running container: the dashboard's keys for one.
            lifecycle = {"stop", "restart", "freeze", "console", "shell", "snapshot"}
            assert lifecycle <= offered(screen)
            assert {"edit", "add_key", "unset"} <= offered(screen)
            assert not {"start", "restore", "delete_snapshot"} & offered(screen)
            tabs = screen.query_one("#tabs")
            tabs.active = "tab-snapshots"  # type: ignore[attr-defined]
            await pilot.pause()
            assert {"restore", "delete_snapshot"} <= offered(screen)
            assert not {"edit", "add_key", "unset"} & offered(screen)
            # "o" on the config tab restores nothing.
            tabs.active = "tab-config"  # type: ignore[attr-defined]
            await pilot.pause()
            await pilot.press("o")
            assert app.screen is screen
            await pilot.press("escape")

            stopped = await _detail_of(pilot, "builder")
            assert "start" in offered(stopped)
            assert not {"stop", "restart", "freeze", "console", "shell"} & offered(stopped)
            no_snaps = stopped.query_one("#no-snapshots", Static)
            await wait_until(pilot, lambda: no_snaps.display, what="no snapshots")
            assert "no snapshots yet" in str(no_snaps.render())

    run(body())
