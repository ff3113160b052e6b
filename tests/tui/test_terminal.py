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
