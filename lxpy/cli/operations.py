"""Following a long operation (a template build): its log, progress and Ctrl-C."""

from __future__ import annotations

import sys

from lxpy.api.client import Client
from lxpy.cli.parse import EXIT_INTERRUPTED, fail
from lxpy.errors import LxpyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Progress:
    """Build output on stderr: a progress line, and with `show_log` the log
    lines as they come (else only the last TAIL are kept, for a failure).

    On a terminal the progress line is redrawn in place under the log; in
    a pipe it is printed once per stage, so logs stay readable.
    """

    TAIL = 20

    def __init__(self, show_log: bool = True, bar: bool = False) -> None:
        from collections import deque

        # A bar before the stage (downloads: the stage says size and rate).
        self.bar = bar
        self.tty = sys.stderr.isatty()
        self.line = ""
        self.stage: object = None
        self.show_log = show_log
        self.tail: deque[str] = deque(maxlen=self.TAIL)

    def _clear(self) -> None:
        if self.tty and self.line:
            sys.stderr.write("\r\x1b[K")

    def log(self, text: str) -> None:
        self.tail.append(text.rstrip("\n"))
        if not self.show_log:
            return
        self._clear()
        sys.stderr.write(text.rstrip("\n") + "\n")
        if self.tty and self.line:
            sys.stderr.write(self.line)
        sys.stderr.flush()

    def update(self, progress: object, stage: object) -> None:
        if not stage:
            return  # just started: nothing to say yet
        try:
            pct = f"{float(progress) * 100:3.0f}%"  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pct = "  ?%"
        text = f"[{pct}] {stage or ''}".rstrip()
        if self.bar:
            text = f"{bar_text(progress)} {pct} {stage or ''}".rstrip()
        if self.tty:
            self._clear()
            self.line = text
            sys.stderr.write(text)
        elif _kind(stage) != _kind(self.stage):
            # In a pipe, once per stage ("downloading rootfs", not each
            # figure of it).
            sys.stderr.write(text + "\n")
        self.stage = stage
        sys.stderr.flush()

    def done(self) -> None:
        self._clear()
        self.line = ""
        sys.stderr.flush()


def _kind(stage: object) -> str:
    return str(stage).partition(":")[0]


def bar_text(progress: object, width: int = 24) -> str:
    """`[#######.........]` for a fraction from 0 to 1."""
    try:
        frac = min(max(float(progress), 0.0), 1.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        frac = 0.0
    done = round(frac * width)
    return "[" + "#" * done + "." * (width - done) + "]"


def follow_operation(
    client: Client, op: dict[str, Any], progress: Progress | None = None
) -> dict[str, Any]:
    """Show a running operation's progress (and log, as `progress` says);
    return it once it has ended."""
    op_id = str(op["id"])
    progress = progress or Progress()
    final: dict[str, Any] | None = None
    try:
        for msg in client.operation_stream(op_id):
            if "log" in msg:
                progress.log(str(msg["log"]))
            elif "operation" in msg:
                # The last line; the daemon ends the stream right after it,
                # so read on to the end rather than hang up mid-response.
                final = msg["operation"]
            elif "progress" in msg or "stage" in msg:
                progress.update(msg.get("progress"), msg.get("stage"))
    finally:
        progress.done()
    if final is None:
        # The stream ended without its last line (daemon restart, proxy):
        # ask for the outcome instead.
        final = client.wait_operation(op_id)
    return final


def cancel(client: Client, op: dict[str, Any], what: str) -> int:
    # Ctrl-C: the work runs in the daemon, so stop it there too; a fresh
    # client bounds the wait in case the daemon is itself stuck.
    try:
        Client(client.socket_path, timeout=15).cancel_operation(str(op["id"]))
    except LxpyError as e:
        return fail(f"interrupted; could not cancel {what}: {e.message}", e.hint, EXIT_INTERRUPTED)
    return fail(f"interrupted; cancelled {what}", status=EXIT_INTERRUPTED)
