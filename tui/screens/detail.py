"""The detail screen of one container: summary, config, snapshots (create,
restore, delete), the console log tail and the container's recent events."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from lxpy.errors import LxpyError, NotFound
from lxpy.model.names import validate_name
from tui.inventory import RUNNING_STATES, addresses, uptime
from tui.messages import Connected, Lifecycle
from tui.screens.modals import ConfirmScreen, PromptScreen

if TYPE_CHECKING:
    from tui.app import LxpyApp

# Lines of console log kept on screen.
LOG_TAIL = 500


def _value(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def event_line(event: dict[str, Any]) -> str:
    """One event as a log line: time, action and its data."""
    data = event.get("data") or {}
    detail = " ".join(f"{k}={_value(v)}" for k, v in sorted(data.items()))
    return f"{event.get('timestamp', '')} {event.get('action', '')} {detail}".rstrip()


class DetailScreen(Screen[None]):
    """Everything about container `name`."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("p", "snapshot", "snapshot"),
        Binding("o", "restore", "restore snap"),
        Binding("delete", "delete_snapshot", "delete snap"),
        Binding("g", "reload", "reload"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.container_name = name
        self.ct: dict[str, Any] = {}

    @property
    def lxpy(self) -> LxpyApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading ...", id="summary")
        with TabbedContent(id="tabs"):
            with TabPane("Config", id="tab-config"):
                yield DataTable(id="config", cursor_type="row", show_cursor=False)
            with TabPane("Snapshots", id="tab-snapshots"):
                yield DataTable(id="snapshots", cursor_type="row")
            with TabPane("Console", id="tab-console"):
                yield Log(id="console", max_lines=LOG_TAIL)
            with TabPane("Events", id="tab-events"):
                yield Log(id="events", max_lines=LOG_TAIL)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"container {self.container_name}"
        config = self.query_one("#config", DataTable)
        config.add_column("KEY", key="key")
        config.add_column("VALUE", key="value")
        snaps = self.query_one("#snapshots", DataTable)
        snaps.add_column("SNAPSHOT", key="name")
        snaps.add_column("CREATED", key="created")
        events = self.query_one("#events", Log)
        for event in self.lxpy.events_for(self.container_name):
            events.write_line(event_line(event))
        self.set_interval(self.lxpy.stats_interval, self._tick)
        self.action_reload()

    # -- loading -------------------------------------------------------------------

    def action_reload(self) -> None:
        self.load_container()
        self.load_snapshots()
        self.load_console()

    def _tick(self) -> None:
        self._summary()
        if self.ct.get("state") in RUNNING_STATES:
            self.load_console()

    @work(group="container", exclusive=True)
    async def load_container(self) -> None:
        try:
            self.ct = await self.lxpy.client.container(self.container_name)
        except NotFound:
            self.ct = {}
            self.query_one("#summary", Static).update(
                f"container {self.container_name} does not exist (any more)"
            )
            return
        except LxpyError as e:
            self.notify(e.message, severity="error")
            return
        self._summary()
        table = self.query_one("#config", DataTable)
        table.clear()
        config = self.ct.get("config") or {}
        for key in sorted(config):
            table.add_row(key, _value(config[key]), key=key)

    def _summary(self) -> None:
        if not self.ct:
            return
        ct = self.ct
        lines = [
            f"[b]{ct.get('name')}[/b]  {ct.get('state', '-')}  "
            f"template {ct.get('template', '-')}  uptime {uptime(ct, self.lxpy.clock())}",
            f"addresses: {', '.join(addresses(ct)) or '-'}",
            f"created {ct.get('created_at') or '-'}  path {ct.get('path') or '-'}",
        ]
        if ct.get("init_pid"):
            lines.append(f"init pid {ct['init_pid']}  started {ct.get('started_at') or '-'}")
        last = ct.get("last_exit")
        if isinstance(last, dict):
            lines.append(f"last exit: {last.get('reason')} {last.get('detail') or ''}".rstrip())
        if ct.get("error"):
            lines.append(f"[red]error: {ct['error']}[/red]")
        self.query_one("#summary", Static).update("\n".join(lines))

    @work(group="snapshots", exclusive=True)
    async def load_snapshots(self) -> None:
        try:
            snaps = await self.lxpy.client.snapshots(self.container_name)
        except LxpyError:
            return
        table = self.query_one("#snapshots", DataTable)
        keep = self.selected_snapshot()
        table.clear()
        for s in snaps:
            table.add_row(str(s.get("name")), str(s.get("created_at") or "-"), key=str(s["name"]))
        if keep:
            try:
                table.move_cursor(row=table.get_row_index(keep))
            except RowDoesNotExist:  # it was the one deleted
                pass

    @work(group="console", exclusive=True)
    async def load_console(self) -> None:
        log = self.query_one("#console", Log)
        try:
            text = await self.lxpy.client.console_log(self.container_name)
        except NotFound:
            text = "(no console log: the container has not run since lxpyd started)\n"
        except LxpyError as e:
            text = f"(console log unavailable: {e.message})\n"
        lines = text.splitlines()[-LOG_TAIL:]
        log.clear()
        log.write_lines(lines)

    # -- live updates --------------------------------------------------------------

    @on(Lifecycle)
    def _lifecycle(self, msg: Lifecycle) -> None:
        if msg.container != self.container_name:
            return
        self.query_one("#events", Log).write_line(event_line(msg.event))
        if msg.action == "container-renamed":
            new = (msg.event.get("data") or {}).get("new")
            if new:
                self.container_name = str(new)
                self.sub_title = f"container {new}"
        if msg.action.startswith("snapshot-"):
            self.load_snapshots()
        if msg.action == "container-state" and self.ct:
            self.ct = {**self.ct, "state": (msg.event.get("data") or {}).get("new")}
            self._summary()
            self.load_console()
        self.load_container()

    @on(Connected)
    def _reconnected(self) -> None:
        self.action_reload()

    # -- snapshot actions ----------------------------------------------------------

    def selected_snapshot(self) -> str | None:
        table = self.query_one("#snapshots", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        except CellDoesNotExist:
            return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("restore", "delete_snapshot"):
            return True if self.selected_snapshot() else None
        return True

    @on(DataTable.RowHighlighted, "#snapshots")
    def _snapshot_highlighted(self) -> None:
        self.refresh_bindings()

    @work(group="snapshot-actions")
    async def _snap_call(self, what: str, coro: Any) -> None:
        try:
            await coro
        except LxpyError as e:
            self.notify(
                e.message + (f"\nhint: {e.hint}" if e.hint else ""),
                title=f"{what} failed",
                severity="error",
                timeout=8,
            )
            return
        self.notify(what, timeout=3)
        self.load_snapshots()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_snapshot(self) -> None:
        name = self.container_name

        def answer(snap: str | None) -> None:
            if snap is not None:
                client = self.lxpy.client
                self._snap_call(f"snapshot of {name}", client.create_snapshot(name, snap or None))

        self.query_one(TabbedContent).active = "tab-snapshots"
        self.app.push_screen(
            PromptScreen(
                f"Snapshot of {name} (empty for the next snapN):",
                placeholder="snapshot name",
                check=lambda v: validate_name(v, "snapshot"),
                allow_empty=True,
            ),
            answer,
        )

    def action_restore(self) -> None:
        snap = self.selected_snapshot()
        if not snap:
            return
        name = self.container_name

        def answer(yes: bool | None) -> None:
            if yes:
                client = self.lxpy.client
                self._snap_call(f"restored {name} to {snap}", client.restore_snapshot(name, snap))

        # Snapshots hold files only: a running container is restarted.
        running = self.ct.get("state") in RUNNING_STATES
        again = "\nIt is stopped, restored and started again." if running else ""
        self.app.push_screen(
            ConfirmScreen(
                f"Roll {name} back to snapshot {snap}?\nChanges since then are lost.{again}",
                yes="Restore",
            ),
            answer,
        )

    def action_delete_snapshot(self) -> None:
        snap = self.selected_snapshot()
        if not snap:
            return
        name = self.container_name

        def answer(yes: bool | None) -> None:
            if yes:
                client = self.lxpy.client
                self._snap_call(f"deleted snapshot {snap}", client.delete_snapshot(name, snap))

        self.app.push_screen(
            ConfirmScreen(f"Delete snapshot {snap} of {name}?", yes="Delete"), answer
        )
