"""Widgets of the app."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable


class ContainerTable(DataTable[str | Text]):
    """The dashboard's table: a DataTable that redraws its rows when it has
    resized its columns.

    Textual sizes columns when idle, after rows were added or cells changed,
    but its row-render cache is keyed on a counter that sizing does not bump:
    rows drawn between the change and the sizing kept their old column widths
    until their next change. Bumping the counter when a width changed redraws
    them (and costs nothing when none did).
    """

    def _resizing(self, size: Callable[[], None]) -> None:
        before = [c.content_width for c in self.ordered_columns]
        size()
        if [c.content_width for c in self.ordered_columns] != before:
            self._update_count += 1
            self.refresh()

    def _update_dimensions(self, new_rows: Iterable[Any]) -> None:
        self._resizing(lambda: super(ContainerTable, self)._update_dimensions(new_rows))

    def _update_column_widths(self, updated_cells: set[Any]) -> None:
        self._resizing(lambda: super(ContainerTable, self)._update_column_widths(updated_cells))
