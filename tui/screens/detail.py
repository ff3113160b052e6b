"""The detail screen of one container: summary, config (set and unset keys),
snapshots (create, restore, delete), devices (add, remove), the console log and the container's
recent events, with the same start/stop/console/shell keys as the dashboard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from lxpy.api.text import format_value, owner_text
from lxpy.cli.devices import device_line
from lxpy.cli.output import yes_no
from lxpy.errors import LxpyError, NotFound
from tui.inventory import RUNNING_STATES, addresses, uptime
from tui.messages import Connected, Disconnected, Lifecycle
from tui.screens.actions import LIFECYCLE_BINDINGS, TERMINAL_BINDINGS, ContainerScreen
from tui.screens.config import ConfigEditScreen
from tui.screens.devices import DeviceAddScreen
from tui.screens.modals import ConfirmScreen
from tui.widgets import ConsoleView

# Lines of console log kept on screen.
LOG_TAIL = 500

# Actions that act on the row under the cursor of one tab, and that tab.
TAB_ACTIONS = {
    "edit": "tab-config",
    "add_key": "tab-config",
    "unset": "tab-config",
    "restore": "tab-snapshots",
    "delete_snapshot": "tab-snapshots",
    "add_device": "tab-devices",
    "remove_device": "tab-devices",
}


def event_line(event: dict[str, Any]) -> str:
    """One event as a log line: time, action and its data."""
    data = event.get("data") or {}
    detail = " ".join(f"{k}={format_value(v)}" for k, v in sorted(data.items()))
    return f"{event.get('timestamp', '')} {event.get('action', '')} {detail}".rstrip()


def _cursor_key(table: DataTable[Any]) -> str | None:
    """The key of the row under `table`'s cursor."""
    if table.row_count == 0:
        return None
    try:
        return table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
    except CellDoesNotExist:
        return None


def _refill(table: DataTable[Any], rows: Sequence[tuple[str, ...]]) -> None:
    """Show `rows` (keyed by their first cell), the cursor kept on its row."""
    keep = _cursor_key(table)
    table.clear()
    for row in rows:
        table.add_row(*row, key=row[0])
    if keep:
        try:
            table.move_cursor(row=table.get_row_index(keep))
        except RowDoesNotExist:  # it is gone
            pass


class DetailScreen(ContainerScreen):
    """Everything about container `name`."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        *LIFECYCLE_BINDINGS,
        *TERMINAL_BINDINGS,
        Binding("p", "snapshot", "snap"),
        Binding("enter", "edit", "edit", priority=True),
        Binding("a", "add_key", "add key"),
        Binding("u", "unset", "unset"),
        Binding("o", "restore", "restore"),
        Binding("delete", "delete_snapshot", "delete"),
        Binding("a", "add_device", "add device"),
        Binding("delete", "remove_device", "remove"),
        Binding("g", "reload", "reload", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.container_name = name
        self.ct: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading ...", id="summary")
        with TabbedContent(id="tabs"):
            with TabPane("Config", id="tab-config"):
                yield DataTable(id="config", cursor_type="row")
            with TabPane("Snapshots", id="tab-snapshots"):
                yield Static("no snapshots yet: p takes one", id="no-snapshots", classes="empty")
                yield DataTable(id="snapshots", cursor_type="row")
            with TabPane("Devices", id="tab-devices"):
                yield Static(
                    "no devices: a adds one (a host directory, ...)",
                    id="no-devices",
                    classes="empty",
                )
                yield DataTable(id="devices", cursor_type="row")
            with TabPane("Console", id="tab-console"):
                yield ConsoleView(LOG_TAIL, id="console")
            with TabPane("Events", id="tab-events"):
                yield Static(
                    f"no events yet: changes to {self.container_name} (state, config, "
                    "snapshots) show here as they happen",
                    id="no-events",
                    classes="empty",
                )
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
        snaps.display = False
        devs = self.query_one("#devices", DataTable)
        for col in ("NAME", "TYPE", "ACTIVE", "CONFIG"):
            devs.add_column(col, key=col.lower())
        devs.display = False
        for event in self.lxpy.events_for(self.container_name):
            self._event(event)
        self._show_events()
        self.set_interval(self.lxpy.stats_interval, self._tick)
        config.focus()
        self.action_reload()

    # -- which container, which row ------------------------------------------------

    def acting_on(self) -> tuple[str, dict[str, Any]] | None:
        return (self.container_name, self.ct) if self.ct else None

    def tab(self) -> str:
        return str(self.query_one(TabbedContent).active)

    def selected_key(self) -> str | None:
        return _cursor_key(self.query_one("#config", DataTable))

    def selected_snapshot(self) -> str | None:
        return _cursor_key(self.query_one("#snapshots", DataTable))

    def selected_device(self) -> str | None:
        return _cursor_key(self.query_one("#devices", DataTable))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Row actions show only on their tab, and only with a row to act on.
        tab = TAB_ACTIONS.get(action)
        if tab is None:
            return super().check_action(action, parameters)
        if tab != self.tab() or not self.ct or not self.online():
            return False
        if action in ("edit", "unset"):
            return self.selected_key() is not None
        if action in ("restore", "delete_snapshot"):
            return self.selected_snapshot() is not None
        if action == "remove_device":
            return self.selected_device() is not None
        return True

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        # The tab's own widget takes the keys (arrows, page up/down).
        pane = event.pane
        for widget in pane.query("DataTable, ConsoleView, Log"):
            if widget.display:
                widget.focus()
                break
        self.refresh_bindings()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self) -> None:
        self.refresh_bindings()

    # -- loading -------------------------------------------------------------------

    def action_reload(self) -> None:
        self.load_container()
        self.load_snapshots()
        self.load_console()

    def _tick(self) -> None:
        self._summary()
        if self.ct.get("state") in RUNNING_STATES:
            self.load_console()

    def after_hand_over(self) -> None:
        self.action_reload()

    @work(group="container", exclusive=True)
    async def load_container(self) -> None:
        try:
            self.ct = await self.lxpy.client.container(self.container_name)
        except NotFound:
            self.ct = {}
            if not self.is_attached:
                return  # closed while lxpyd answered
            self.query_one("#summary", Static).update(
                f"container {self.container_name} does not exist (any more)"
            )
            self.refresh_bindings()
            return
        except LxpyError as e:
            self.notify(e.message, severity="error")
            return
        if not self.is_attached:
            return
        self._summary()
        config = self.ct.get("config") or {}
        rows = [(key, format_value(config[key])) for key in sorted(config)]
        _refill(self.query_one("#config", DataTable), rows)
        self.refresh_bindings()
        if self.ct.get("devices") or self.query_one("#devices", DataTable).row_count:
            self.load_devices()

    @work(group="devices", exclusive=True)
    async def load_devices(self) -> None:
        try:
            devs = await self.lxpy.client.devices(self.container_name)
        except LxpyError:
            return
        if not self.is_attached:
            return
        rows = [
            (str(d["name"]), str(d.get("type", "")), yes_no(d.get("active")), device_line(d))
            for d in devs
        ]
        table = self.query_one("#devices", DataTable)
        _refill(table, rows)
        table.display = bool(rows)
        self.query_one("#no-devices").display = not rows
        self.refresh_bindings()

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
        if isinstance(ct.get("owner"), dict):
            lines.append(f"owner: {owner_text(ct['owner'])}")
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
        if not self.is_attached:
            return
        table = self.query_one("#snapshots", DataTable)
        _refill(table, [(str(s["name"]), str(s.get("created_at") or "-")) for s in snaps])
        table.display = bool(snaps)
        self.query_one("#no-snapshots").display = not snaps
        self.refresh_bindings()

    @work(group="console", exclusive=True)
    async def load_console(self) -> None:
        try:
            text = await self.lxpy.client.console_log(self.container_name)
        except NotFound:
            text = "(no console log: the container has not run since lxpyd started)\n"
        except LxpyError as e:
            text = f"(console log unavailable: {e.message})\n"
        if self.is_attached:
            self.query_one("#console", ConsoleView).show(text)

    # -- live updates --------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> None:
        self.query_one("#events", Log).write_line(event_line(event))

    def _show_events(self) -> None:
        some = self.query_one("#events", Log).line_count > 0
        self.query_one("#events").display = some
        self.query_one("#no-events").display = not some

    @on(Lifecycle)
    def _lifecycle(self, msg: Lifecycle) -> None:
        if msg.container != self.container_name:
            return
        self._event(msg.event)
        self._show_events()
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
            self.refresh_bindings()
            self.load_console()
        self.load_container()

    @on(Connected)
    def _reconnected(self) -> None:
        self.action_reload()

    @on(Disconnected)
    def _disconnected(self) -> None:
        self.refresh_bindings()

    # -- config --------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss(None)

    def _edit(self, key: str | None) -> None:
        config = self.ct.get("config") or {}
        value = format_value(config[key]) if key in config else ""
        running = self.ct.get("state") in RUNNING_STATES
        screen = ConfigEditScreen(self.container_name, key, value, running)

        def saved(ok: bool | None) -> None:
            if ok:
                self.load_container()

        self.app.push_screen(screen, saved)

    def action_edit(self) -> None:
        if self.check_action("edit", ()) and (key := self.selected_key()):
            self._edit(key)

    @on(DataTable.RowSelected, "#config")
    def _config_chosen(self) -> None:
        self.action_edit()

    def action_add_key(self) -> None:
        if self.check_action("add_key", ()):
            self._edit(None)

    def action_unset(self) -> None:
        if not (self.check_action("unset", ()) and (key := self.selected_key())):
            return
        name = self.container_name
        self._act(
            name,
            f"unsetting {key} of",
            f"unset {key} of",
            lambda: self.lxpy.client.update_config(name, unset=[key]),
            then=self.load_container,
        )

    # -- snapshots -----------------------------------------------------------------

    def action_snapshot(self) -> None:
        self.query_one(TabbedContent).active = "tab-snapshots"
        super().action_snapshot()

    def _confirmed(
        self,
        question: str,
        yes: str,
        doing: str,
        done: str,
        call: Callable[[], Awaitable[object]],
        then: Callable[[], object],
    ) -> None:
        """Ask `question`; on yes, run `call` on this container as _act does."""
        name = self.container_name

        def answer(ok: bool | None) -> None:
            if ok:
                self._act(name, doing, done, call, then=then)

        self.app.push_screen(ConfirmScreen(question, yes=yes), answer)

    def action_restore(self) -> None:
        snap = self.selected_snapshot()
        if not (snap and self.check_action("restore", ())):
            return
        name = self.container_name
        # Snapshots hold files only: a running container is restarted.
        running = self.ct.get("state") in RUNNING_STATES
        again = "\nIt is stopped, restored and started again." if running else ""
        self._confirmed(
            f"Roll {name} back to snapshot {snap}?\nChanges since then are lost.{again}",
            "Restore",
            f"restoring {snap} of",
            f"restored {snap} of",
            lambda: self.lxpy.client.restore_snapshot(name, snap),
            self.action_reload,
        )

    def action_delete_snapshot(self) -> None:
        snap = self.selected_snapshot()
        if not (snap and self.check_action("delete_snapshot", ())):
            return
        name = self.container_name
        self._confirmed(
            f"Delete snapshot {snap} of {name}?",
            "Delete",
            f"deleting snapshot {snap} of",
            f"deleted snapshot {snap} of",
            lambda: self.lxpy.client.delete_snapshot(name, snap),
            self.load_snapshots,
        )

    # -- devices -------------------------------------------------------------------

    def action_add_device(self) -> None:
        if not self.check_action("add_device", ()):
            return

        def added(ok: bool | None) -> None:
            if ok:
                self.load_container()
                self.load_devices()

        self.app.push_screen(DeviceAddScreen(self.container_name), added)

    def action_remove_device(self) -> None:
        dev = self.selected_device()
        if not (dev and self.check_action("remove_device", ())):
            return
        name = self.container_name
        running = self.ct.get("state") in RUNNING_STATES
        now = "\nThe running container loses it at once." if running else ""
        self._confirmed(
            f"Remove device {dev} from {name}?{now}",
            "Remove",
            f"removing device {dev} from",
            f"removed device {dev} from",
            lambda: self.lxpy.client.remove_device(name, dev),
            self.load_container,
        )
