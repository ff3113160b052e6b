"""End to end in a real terminal: tmux runs `lxpy tui`, keys act on a
container, and the pane shows the result."""

from __future__ import annotations

import pytest

from lxpy.api.client import Client
from tests.conftest import VENV_BIN, Daemon
from tests.tui.helpers import Tmux, row_of

pytestmark = pytest.mark.integration


def test_keys_in_a_real_terminal(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "one")
    daemon.cli("create", "-t", "busybox", "two")
    client = Client(daemon.socket, timeout=30)
    term = Tmux(f"{VENV_BIN / 'lxpy'} --socket {daemon.socket} tui", size=(80, 24))
    try:
        term.wait_for(lambda s: bool(row_of(s, "one") and row_of(s, "two")), what="the table")
        # The cursor starts on "one": snapshot it, then destroy "two".
        term.keys("p")
        term.wait_for(lambda s: "Snapshot of one" in s, what="the snapshot prompt")
        term.keys("s", "1", "Enter")
        term.wait_for(lambda s: "Snapshot of one" not in s, what="the prompt to close")
        assert [s["name"] for s in client.snapshots("one")] == ["s1"]
        term.keys("Down", "d")
        term.wait_for(lambda s: "Destroy container two" in s, what="the confirmation")
        term.keys("y")
        screen = term.wait_for(lambda s: not row_of(s, "two"), what="two to go")
        assert row_of(screen, "one")
        assert [c["name"] for c in client.containers()] == ["one"]
        term.keys("q")
        term.wait_for(lambda s: not row_of(s, "one"), what="the app to quit")
    finally:
        term.close()


def _config_rows(screen: str) -> list[str]:
    """The config table's lines on the detail screen (below KEY VALUE)."""
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split() == ["KEY", "VALUE"]), None)
    return [] if start is None else [line for line in lines[start + 1 :] if line.strip()]


def _field(screen: str) -> str:
    """The text in the dialog's input field (the line between its edges)."""
    return next((line for line in screen.splitlines() if "▊  " in line), "")


def test_edit_a_limit_from_the_detail_screen(daemon: Daemon) -> None:
    daemon.cli("create", "-t", "busybox", "box", "--set", "limits.memory=32MiB")
    daemon.cli("start", "box")
    refused = daemon.cli("config", "set", "box", "limits.memory", "lots", check=False)
    message = refused.stderr.splitlines()[0].removeprefix("error: ")
    client = Client(daemon.socket, timeout=30)
    term = Tmux(f"{VENV_BIN / 'lxpy-tui'} --socket {daemon.socket}", size=(100, 30))
    try:
        term.wait_for(lambda s: "RUNNING" in row_of(s, "box"), what="the table")
        term.keys("Enter")
        screen = term.wait_for(lambda s: bool(_config_rows(s)), what="the config")
        # The cursor is on the first row: the limit.
        assert _config_rows(screen)[0].split() == ["limits.memory", "32MiB"]
        term.keys("Enter")
        term.wait_for(lambda s: "Set limits.memory of box" in s, what="the dialog")
        # The value is selected: typing replaces it.
        term.keys("lots", "Enter")
        # The daemon's refusal, in the dialog, as `lxpy config set` says it.
        term.wait_for(lambda s: message in s, what=message)
        assert "Set limits.memory of box" in term.screen()
        assert client.container("box")["config"]["limits.memory"] == "32MiB"
        # Textual handles keys bound to actions (ctrl+a, ctrl+k, enter) after
        # the printable ones that arrive with them: clear the field first.
        term.keys("C-a", "C-k")
        term.wait_for(lambda s: "lots" not in _field(s), what="an empty field")
        term.keys("64MiB", "Enter")
        term.wait_for(
            lambda s: "Set limits.memory" not in s and "64MiB" in row_of(s, "limits.memory"),
            what="the new value in the config table",
        )
        # Applied: read back through the CLI and the API (the cgroup's limit).
        shown = daemon.cli("config", "show", "box", "limits.memory").stdout.strip()
        assert shown == "64MiB"
        assert client.container("box")["stats"]["memory_limit_bytes"] == 64 * 2**20
        # The dashboard's console key works here too, and comes back here.
        term.keys("c")
        term.wait_for(lambda s: "Connected to the console of box" in s, what="the console")
        term.keys("C-a", "q")
        term.wait_for(lambda s: "container box" in s, what="the details to come back")
        term.keys("q")
        term.wait_for(lambda s: "container box" not in s, what="the app to quit")
    finally:
        term.close()
