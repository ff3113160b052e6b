"""Snapshot tests of the dashboard, create and detail screens.

They run against a fixed-data lxpyd stand-in (tests/tui/fakeapi.py) with a
fixed clock, so times and uptimes are the same on every run. Update the
stored SVGs with `pytest tests/tui --snapshot-update` after a deliberate
change, and look at them before committing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Label
from textual.widgets.data_table import ColumnKey

from tests.tui.conftest import fixed_clock
from tests.tui.fakeapi import CONTAINERS, FakeLxpyd
from tui.app import LxpyApp


@pytest.fixture
def app(fake_lxpyd: FakeLxpyd, monkeypatch: pytest.MonkeyPatch) -> LxpyApp:
    # A relative socket path keeps the temporary directory out of the header.
    monkeypatch.chdir(fake_lxpyd.socket.parent)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return LxpyApp(fake_lxpyd.socket.name, clock=fixed_clock, stats_interval=60)


async def _loaded(pilot: Pilot[Any]) -> None:
    """Wait until the table holds every container and has sized its columns
    to them (it does that on a later refresh than the one adding rows)."""

    def ready() -> bool:
        tables = pilot.app.screen.query(DataTable)
        if not tables or tables.first().row_count != len(CONTAINERS):
            return False
        columns = tables.first().columns
        return columns[ColumnKey("template")].content_width >= len("debian-bookworm")

    for _ in range(200):
        if ready():
            break
        await pilot.pause(0.02)
    assert ready(), "the dashboard did not fill"
    await pilot.pause()


async def _on_web(pilot: Pilot[Any]) -> None:
    await _loaded(pilot)
    pilot.app.screen.select("web")  # type: ignore[attr-defined]
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (132, 36)])
def test_dashboard(app: LxpyApp, snap_compare: Any, size: tuple[int, int]) -> None:
    """The table with running, frozen, stopped and broken containers; the
    cursor on a running one shows every action of a running container."""
    assert snap_compare(app, terminal_size=size, run_before=_on_web)


def test_create_screen(app: LxpyApp, snap_compare: Any) -> None:
    """The create form with a name that breaks the naming rules."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _loaded(pilot)
        await pilot.press("n")
        await pilot.pause(0.2)
        await pilot.press(*"9lives")
        await pilot.pause()

    assert snap_compare(app, run_before=run_before)


def test_detail_screen(app: LxpyApp, snap_compare: Any) -> None:
    """The detail screen of a running container on its snapshots tab."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _on_web(pilot)
        await pilot.press("enter")
        await pilot.pause(0.2)
        pilot.app.screen.query_one("#tabs").active = "tab-snapshots"  # type: ignore[attr-defined]
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=run_before)


def test_dashboard_no_color(
    fake_lxpyd: FakeLxpyd, monkeypatch: pytest.MonkeyPatch, snap_compare: Any
) -> None:
    """With NO_COLOR the dashboard is monochrome and still says every state."""
    monkeypatch.chdir(fake_lxpyd.socket.parent)
    monkeypatch.setenv("NO_COLOR", "1")
    app = LxpyApp(fake_lxpyd.socket.name, clock=fixed_clock, stats_interval=60)
    assert app.no_color
    assert snap_compare(app, run_before=_on_web)


async def _detail_tab(pilot: Pilot[Any], tab: str) -> None:
    await _on_web(pilot)
    await pilot.press("enter")
    screen = pilot.app.screen
    for _ in range(200):
        if getattr(screen, "ct", None) and screen.query_one("#config", DataTable).row_count:
            break
        await pilot.pause(0.02)
    screen.query_one("#tabs").active = tab  # type: ignore[attr-defined]
    console = screen.query_one("#console")
    for _ in range(200):
        if tab != "tab-console" or console.log_text is not None:  # type: ignore[attr-defined]
            break
        await pilot.pause(0.02)
    await pilot.pause(0.3)


def test_detail_config_tab(app: LxpyApp, snap_compare: Any) -> None:
    """Config values as `lxpy config show` prints them (lxpybr0, true, the
    arguments space-separated), the owner, and the keys of the config tab."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _detail_tab(pilot, "tab-config")

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_detail_console_tab(app: LxpyApp, snap_compare: Any) -> None:
    """A systemd console log as its terminal shows it: colours, no escape
    sequences, redrawn status lines, long lines wrapped."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _detail_tab(pilot, "tab-console")

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_detail_events_empty(app: LxpyApp, snap_compare: Any) -> None:
    """The Events tab says there are none yet."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _detail_tab(pilot, "tab-events")

    assert snap_compare(app, run_before=run_before)


def test_config_edit_refused(app: LxpyApp, snap_compare: Any) -> None:
    """A limit edited to a value lxpyd refuses: its message under the field."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _detail_tab(pilot, "tab-config")
        config = pilot.app.screen.query_one("#config", DataTable)
        config.move_cursor(row=config.get_row_index("limits.memory"))
        await pilot.press("enter")
        for _ in range(200):
            if pilot.app.screen.query("#problem"):
                break
            await pilot.pause(0.02)
        await pilot.press(*"lots", "enter")
        problem = pilot.app.screen.query_one("#problem", Label)
        for _ in range(200):
            if "invalid size" in str(problem.render()):
                break
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_dashboard_numbers_fit(
    fake_lxpyd: FakeLxpyd, monkeypatch: pytest.MonkeyPatch, snap_compare: Any
) -> None:
    """Stats that come with a later poll widen their columns: 127.4% and
    1023M shown whole, not cut to the width of "-"."""
    monkeypatch.chdir(fake_lxpyd.socket.parent)
    monkeypatch.delenv("NO_COLOR", raising=False)
    for ct in fake_lxpyd.containers:
        ct["stats"] = {}
    app = LxpyApp(fake_lxpyd.socket.name, clock=fixed_clock, stats_interval=60)

    async def run_before(pilot: Pilot[Any]) -> None:
        await _on_web(pilot)
        fake_lxpyd.container("db")["stats"] = {"cpu_percent": 127.4, "memory_bytes": 1023 * 2**20}
        pilot.app.screen.poll()  # type: ignore[attr-defined]
        table = pilot.app.screen.query_one(DataTable)
        for _ in range(200):
            if table.columns[ColumnKey("cpu")].content_width >= len("127.4%"):
                break
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(app, run_before=run_before)


def test_first_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snap_compare: Any) -> None:
    """No container yet: the two steps to the first one, as buttons."""
    fake = FakeLxpyd(tmp_path / "fake.sock", containers=[]).start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    app = LxpyApp("fake.sock", clock=fixed_clock, stats_interval=60)

    async def run_before(pilot: Pilot[Any]) -> None:
        for _ in range(200):
            select = pilot.app.screen.query("#welcome-template")
            if select and select.first().value == "busybox":  # type: ignore[attr-defined]
                break
            await pilot.pause(0.02)
        await pilot.pause(0.2)

    try:
        assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)
    finally:
        fake.stop()
