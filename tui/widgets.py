"""Widgets of the app."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from rich.ansi import AnsiDecoder
from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable, RichLog


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


# C0 controls a terminal would act on or ignore, but never print; tab, line
# feed, carriage return and escape are handled on their own.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")


def console_text(log: str, keep: int) -> Text:
    """The last `keep` lines of a console log as a terminal shows them.

    Console output is written for a terminal: colours and bold as SGR escape
    sequences (systemd's `[  OK  ]`), cursor and erase sequences, lines that
    end in CR LF and status lines redrawn after a lone CR. Shown raw, the
    sequences reach the real terminal, which acts on them while Textual
    counts them as text, so the rest of the line (and the scrollbar drawn
    after it) lands in the wrong columns. Here SGR becomes style, other
    sequences and controls go, and a line shows what was written after its
    last CR, as the screen would.
    """
    decoder = AnsiDecoder()
    lines = log.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = Text()
    for i, line in enumerate(lines[-keep:]):
        if i:
            out.append("\n")
        text = decoder.decode_line(_CONTROLS.sub("", line.rstrip("\r")))
        if "\x1b" in text.plain:  # a sequence the decoder did not know
            text.plain = text.plain.replace("\x1b", " ")
        out.append_text(text)
    return out


class ConsoleView(RichLog):
    """A container's console log, shown as its terminal would show it and
    wrapped at the widget's width (again when that changes), so no line runs
    off the side and there is nothing to scroll sideways.

    Args:
        keep: how many of the log's last lines are shown.
    """

    DEFAULT_CSS = """
    ConsoleView {
        overflow-x: hidden;
        overflow-y: auto;
    }
    """

    def __init__(self, keep: int, id: str | None = None) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, id=id)
        self.keep = keep
        self.log_text: str | None = None
        self._width = 0

    def show(self, log: str) -> None:
        """Show `log` (the whole console log), unless it is already shown."""
        if log != self.log_text:
            self.log_text = log
            self._draw()

    def _draw(self) -> None:
        # Follow the end, unless the user scrolled up to read.
        at_end = self.scroll_y >= self.max_scroll_y
        y = self.scroll_y
        self.clear()
        self.write(console_text(self.log_text or "", self.keep), scroll_end=at_end)
        if not at_end:
            self.scroll_to(y=y, animate=False, immediate=True)
        self._width = self.size.width

    def on_resize(self, event: Resize) -> None:
        first = not self._size_known
        super().on_resize(event)
        if first:
            self._width = event.size.width
        elif event.size.width != self._width and self.log_text is not None:
            self._draw()
