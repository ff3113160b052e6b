"""The dashboard: every container of the host in one live table.

Rows follow the event stream: a state event is applied to its row at once,
then the container is fetched again; bursts of events are coalesced into
one fetch per container (or one list when many changed). A periodic list
refresh brings stats and uptimes and heals anything missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Footer, Header, Static
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from lxpy.errors import LxpyError, NotFound
from lxpy.model.names import validate_name
from tui.inventory import COLUMNS, Inventory, Row
from tui.messages import Connected, Disconnected, Lifecycle, OperationUpdate
from tui.screens.actions import (
    ACTION_STATES,
    LIFECYCLE_BINDINGS,
    PALETTE,
    TERMINAL_BINDINGS,
    ContainerScreen,
)
from tui.screens.modals import ConfirmScreen, PromptScreen
from tui.welcome import Welcome
from tui.widgets import ContainerTable

# Seconds to gather a burst of events before fetching what they touched.
COALESCE = 0.03
# Past this many changed containers one list beats many single fetches.
LIST_THRESHOLD = 16

STATE_STYLES = {
    "RUNNING": "bold green",
    "STOPPED": "dim",
    "FROZEN": "bold cyan",
    "STARTING": "yellow",
    "STOPPING": "yellow",
    "ERROR": "bold red",
}

# The dashboard's actions: the shared ones, and those on the row itself.
ACTIONS: dict[str, frozenset[str] | None] = {
    **ACTION_STATES,
    "clone": None,
    "destroy": None,
    "details": None,
}

DASHBOARD_PALETTE = (
    *PALETTE,
    ("clone", "Clone", "copy the container under a new name"),
    ("destroy", "Destroy", "delete the container and its snapshots (asks first)"),
    ("details", "Details", "config, snapshots, console log, events"),
)


def _cell(column: int, value: str) -> str | Text:
    if column == 1:
        return Text(value, style=STATE_STYLES.get(value, ""))
    return value


class DashboardScreen(ContainerScreen):
    """The table of containers and the actions on the selected one."""

    BINDINGS = [
        Binding("n", "create", "new"),
        Binding("enter", "details", "info", priority=True),
        *LIFECYCLE_BINDINGS,
        Binding("p", "snapshot", "snap"),
        Binding("l", "clone", "copy"),
        Binding("d", "destroy", "destroy"),
        *TERMINAL_BINDINGS,
    ]
    ACTIONS = ACTIONS
    PALETTE = DASHBOARD_PALETTE

    def __init__(self) -> None:
        super().__init__()
        self.inv = Inventory()
        self._rows: dict[str, Row] = {}
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._select_when_shown: str | None = None
        # Event counter, and the last event that touched each name: a list
        # fetched before an event must not undo what the event showed.
        self._seq = 0
        self._bindings_key: tuple[object, ...] = ()
        self._banner = Static("connecting to lxpyd ...", id="banner")
        self._table = ContainerTable(id="containers", cursor_type="row", zebra_stripes=True)
        self._welcome = Welcome(id="welcome")
        self._touched: dict[str, int] = {}
        self.connected = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield self._banner
        yield self._table
        yield self._welcome
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.inv.clock = self.lxpy.clock
        table = self.table
        for title in COLUMNS:
            table.add_column(title, key=title.lower())
        self.set_interval(self.lxpy.stats_interval, self.poll)
        self._welcome.display = False
        table.focus()

    # -- which container -------------------------------------------------------

    @property
    def table(self) -> DataTable[str | Text]:
        # Kept from compose: a worker finishing while the app shuts down
        # must not fail to find the (already unmounted) table.
        return self._table

    def selected(self) -> str | None:
        """The name of the container under the cursor."""
        table = self.table
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        except CellDoesNotExist:
            return None
        return key.value

    def acting_on(self) -> tuple[str, dict[str, Any]] | None:
        name = self.selected()
        ct = self.inv.get(name) if name else None
        return (name, ct) if name and ct is not None else None

    def online(self) -> bool:
        return self.connected

    def select(self, name: str) -> None:
        """Move the cursor to container `name`, if it has a row."""
        try:
            self.table.move_cursor(row=self.table.get_row_index(name))
        except RowDoesNotExist:
            pass

    def _update_welcome(self) -> None:
        # The first-run panel stands in for the table while lxpyd answers
        # and has no container at all.
        empty = self.connected and not self._rows
        if empty == self._welcome.display:
            return
        self._welcome.display = empty
        self._table.display = not empty
        if empty:
            self._welcome.load()
        else:
            self._table.focus()

    @on(Welcome.CreateAsked)
    def _create_asked(self, msg: Welcome.CreateAsked) -> None:
        self.action_create(msg.template)

    @on(OperationUpdate)
    def _operation(self, msg: OperationUpdate) -> None:
        self._welcome.operation(msg.operation)

    def _update_bindings(self) -> None:
        self._update_welcome()
        # The footer is rebuilt on every refresh_bindings(), which costs a
        # layout pass: do it only when what the keys depend on changed.
        name = self.selected()
        ct = self.inv.get(name) if name else None
        key = (name, ct.get("state") if ct else None, self.connected)
        if key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._update_bindings()

    @on(DataTable.RowSelected)
    def _chosen(self) -> None:
        self.action_details()

    # -- keeping up with lxpyd -------------------------------------------------

    @on(Connected)
    def _connected(self, msg: Connected) -> None:
        self.connected = True
        self.remove_class("-offline")
        self._banner.update("")
        self.reconcile(msg.containers)

    @on(Disconnected)
    def _disconnected(self, msg: Disconnected) -> None:
        self.connected = False
        self.add_class("-offline")
        text = f"lxpyd is not reachable: {msg.reason}. Reconnecting ..."
        if msg.hint:
            text += f"\nhint: {msg.hint}"
        self._banner.update(text)
        self._update_bindings()

    @on(Lifecycle)
    def _lifecycle(self, msg: Lifecycle) -> None:
        name = msg.container
        if name is None:
            return
        data = msg.event.get("data") or {}
        self._seq += 1
        for touched in (name, data.get("old"), data.get("new")):
            if touched:
                self._touched[str(touched)] = self._seq
        if msg.action == "container-deleted":
            self._drop(name)
        elif msg.action == "container-renamed":
            old, new = str(data.get("old") or name), str(data.get("new") or name)
            was_selected = self.selected() == old
            moved = self.inv.rename(old, new)
            self._drop(old, forget=False)
            if moved:
                self._show(new)
                if was_selected:
                    self.select(new)
            self._mark(new)
        else:
            if msg.action == "container-state" and data.get("new"):
                # Show the new state now; the fetch below brings the rest.
                if self.inv.set_state(name, str(data["new"])):
                    self._show(name)
            self._mark(name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.set_timer(COALESCE, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        names, self._dirty = self._dirty, set()
        if names:
            self.fetch(names)

    @work(group="refresh")
    async def fetch(self, names: set[str]) -> None:
        """Fetch the containers `names` again and update their rows."""
        client = self.lxpy.client
        try:
            if len(names) > LIST_THRESHOLD:
                since = self._seq
                self.reconcile(await client.containers(), since)
                return

            async def one(name: str) -> tuple[str, dict[str, Any] | None]:
                try:
                    return name, await client.container(name)
                except NotFound:
                    return name, None

            for name, ct in await asyncio.gather(*(one(n) for n in names)):
                if ct is None:
                    self._drop(name)
                else:
                    self._show(self.inv.put(ct))
        except LxpyError:
            pass  # the feed reports a lost daemon; the next poll heals the rest
        self._update_bindings()

    @work(group="poll", exclusive=True)
    async def poll(self) -> None:
        """The periodic refresh: stats, uptimes, and anything an event missed."""
        if not self.connected:
            return
        since = self._seq
        try:
            cts = await self.lxpy.client.containers(stats=True)
        except LxpyError:
            return
        self.reconcile(cts, since)

    def reconcile(self, cts: Iterable[dict[str, Any]], since: int | None = None) -> None:
        """Make the table show exactly `cts`, a list asked for when the event
        counter was at `since` (None: a list that is newer than every event).

        Containers an event touched after `since` keep what the event showed.
        """
        protect = {n for n, seq in self._touched.items() if since is not None and seq > since}
        if protect:
            kept = [ct for n in protect if (ct := self.inv.get(n)) is not None]
            cts = [c for c in cts if c.get("name") not in protect] + kept
        present, gone = self.inv.replace_all(cts)
        for name in gone:
            self._drop(name)
        added = False
        for name in sorted(present):
            added |= self._show(name, sort=False)
        if added:
            self._sort()
        self._update_bindings()

    def _show(self, name: str, sort: bool = True) -> bool:
        """Add or update the row of `name`; True when a row was added."""
        row = self.inv.row(name)
        old = self._rows.get(name)
        if old == row:
            return False
        self._rows[name] = row
        table = self.table
        if old is None:
            table.add_row(*(_cell(i, v) for i, v in enumerate(row)), key=name)
            if sort:
                self._sort()
            return True
        for i, (before, after) in enumerate(zip(old, row, strict=True)):
            if before != after:
                # Sized to the new text: a column never cuts a value short.
                table.update_cell(name, COLUMNS[i].lower(), _cell(i, after), update_width=True)
        self._update_bindings()
        return False

    def _drop(self, name: str, forget: bool = True) -> None:
        if forget:
            self.inv.remove(name)
        if self._rows.pop(name, None) is not None:
            self.table.remove_row(name)
        self._update_bindings()

    def _sort(self) -> None:
        keep = self.selected()
        self.table.sort("name")
        if self._select_when_shown in self._rows:
            keep, self._select_when_shown = self._select_when_shown, None
        if keep:
            self.select(keep)

    # -- actions -----------------------------------------------------------------

    def palette_commands(self) -> Iterable[SystemCommand]:
        """Command palette entries for the selected container and the screen."""
        yield SystemCommand("Create container", "pick a template and a name", self.action_create)
        yield from super().palette_commands()

    def action_create(self, template: str | None = None) -> None:
        from tui.screens.create import CreateScreen

        def created(name: str | None) -> None:
            if name:
                # Its row may come only with the next event: select it then.
                self._select_when_shown = name
                self.select(name)
                self._mark(name)

        self.app.push_screen(CreateScreen(set(self.inv.names()), template), created)

    def action_details(self) -> None:
        from tui.screens.detail import DetailScreen

        name = self._target("details")
        if name:
            self.app.push_screen(DetailScreen(name))

    def action_clone(self) -> None:
        if not (name := self._target("clone")):
            return

        def answer(dest: str | None) -> None:
            if dest:
                self._act(
                    name, "cloning", "cloned", lambda: self.lxpy.client.copy_container(name, dest)
                )

        prompt = PromptScreen(
            f"Name of the clone of {name}:", placeholder="new container name", check=validate_name
        )
        self.app.push_screen(prompt, answer)

    def action_destroy(self) -> None:
        if not (name := self._target("destroy")):
            return
        ct = self.inv.get(name) or {}
        snaps = len(ct.get("snapshots") or ())
        running = ct.get("state") not in ("STOPPED", "ERROR")
        question = f"Destroy container {name}"
        if snaps:
            question += f" and its {snaps} snapshot{'s' if snaps > 1 else ''}"
        question += "?" + (" It is running and will be stopped." if running else "")
        question += "\nThis cannot be undone."

        def answer(yes: bool | None) -> None:
            if yes:
                self._act(
                    name,
                    "destroying",
                    "destroyed",
                    lambda: self.lxpy.client.delete_container(name, force=running),
                )

        self.app.push_screen(ConfirmScreen(question, yes="Destroy"), answer)

    def after_hand_over(self) -> None:
        self.poll()
