"""The TUI's pure parts and its client, without a daemon (or with a fake one)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from lxpy.api.aclient import AsyncClient
from lxpy.errors import DaemonUnavailable, NotFound
from tests.tui.fakeapi import CONTAINERS, FakeLxpyd
from tests.tui.helpers import dashboard, rows, run, wait_until
from tui.app import LxpyApp
from tui.inventory import Inventory, format_bytes, format_duration, parse_time
from tui.messages import Lifecycle

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)


def test_durations_and_sizes() -> None:
    assert [format_duration(s) for s in (0, 42, 61, 3600 + 5 * 60, 2 * 86400 + 4 * 3600)] == [
        "0s",
        "42s",
        "1m01s",
        "1h05m",
        "2d04h",
    ]
    assert [format_bytes(n) for n in (512, 3.4 * 2**20, 120 * 2**20, 2 * 2**30)] == [
        "512B",
        "3.4M",
        "120M",
        "2.0G",
    ]
    assert parse_time("2026-11-27T20:00:00Z") == NOW - timedelta(hours=1)
    assert parse_time("yesterday") is None


def test_rows_show_dashes_for_what_the_daemon_does_not_send() -> None:
    inv = Inventory(clock=lambda: NOW)
    inv.put({"name": "a", "state": "STOPPED", "template": "busybox"})
    assert inv.row("a") == ("a", "STOPPED", "busybox", "-", "-", "-", "-")
    inv.put(
        {
            "name": "b",
            "state": "RUNNING",
            "template": "busybox",
            "started_at": "2026-11-27T20:59:00Z",
            "addresses": [{"address": "10.0.0.2", "family": "inet"}, "fd00::2"],
            "stats": {"memory_bytes": 5 * 2**20},
        }
    )
    assert inv.row("b") == ("b", "RUNNING", "busybox", "10.0.0.2, fd00::2", "-", "5.0M", "1m00s")


def test_cpu_percentage_from_cumulative_usage() -> None:
    ticks = iter([0.0, 1.0])
    inv = Inventory(clock=lambda: NOW, monotonic=lambda: next(ticks))
    ct = {"name": "c", "state": "RUNNING", "stats": {"cpu_usage_ns": 10**9}}
    inv.put(ct)
    assert inv.row("c")[4] == "-"
    inv.put({**ct, "stats": {"cpu_usage_ns": 10**9 + 25 * 10**7}})
    assert inv.row("c")[4] == "25.0%"


def test_replace_all_and_state_events() -> None:
    inv = Inventory(clock=lambda: NOW)
    inv.replace_all([{"name": "a", "state": "STOPPED"}, {"name": "b", "state": "STOPPED"}])
    present, gone = inv.replace_all([{"name": "b", "state": "STOPPED"}])
    assert (present, gone) == ({"b"}, {"a"})
    assert inv.set_state("b", "RUNNING") and inv.row("b")[1] == "RUNNING"
    assert not inv.set_state("zz", "RUNNING")


def test_lifecycle_message_names_its_container() -> None:
    msg = Lifecycle({"action": "container-state", "resource": "containers/web"})
    assert (msg.action, msg.container) == ("container-state", "web")
    assert Lifecycle({"action": "template-built", "resource": "templates/x"}).container is None


def test_async_client_against_the_fake(fake_lxpyd: FakeLxpyd) -> None:
    client = AsyncClient(fake_lxpyd.socket, timeout=5)

    async def body() -> None:
        assert [c["name"] for c in await client.containers()] == [c["name"] for c in CONTAINERS]
        assert (await client.container("web"))["state"] == "RUNNING"
        assert (await client.console_log("web")).endswith("web login: ")
        with pytest.raises(NotFound, match="no such thing"):
            await client.container("nope")
        assert [n["name"] for n in await client.networks()] == ["lxpybr0"]
        async with await client.events() as stream:
            event = {"type": "container-updated", "container": "web"}
            fake_lxpyd.emit(event)
            async for got in stream:
                assert got == event
                break
            else:
                pytest.fail("the event stream ended without the event")

    run(body(), timeout=20)


def test_async_client_without_a_daemon(tmp_path: Path) -> None:
    client = AsyncClient(tmp_path / "missing.sock", timeout=5)

    async def body() -> None:
        with pytest.raises(DaemonUnavailable):
            await client.networks()
        with pytest.raises(DaemonUnavailable) as info:
            await client.containers()
        assert "missing.sock" in info.value.message and info.value.hint

    run(body(), timeout=10)


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["tui.app", "lxpy.api.aclient"])
def test_the_tui_never_imports_daemon_code(module: str) -> None:
    loaded = _modules_after_import(module)
    daemon_side = (
        "trio",
        "h11",
        "pyroute2",
        "btrfsutil",
        "lxpy.daemon",
        "lxpy.storage",
        "lxpy.build",
        "lxpy.runtime",
        "lxpy.network",
    )
    bad = sorted(m for m in loaded for f in daemon_side if m == f or m.startswith(f + "."))
    assert bad == []
    if module == "lxpy.api.aclient":
        assert "textual" not in loaded


def test_ruff_on_the_tui() -> None:
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ruff"), "check", "tui"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_starts_without_a_daemon_and_connects_when_it_comes(tmp_path: Path) -> None:
    sock = tmp_path / "late.sock"

    async def body() -> None:
        app = LxpyApp(str(sock), retry_interval=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = dashboard(pilot)
            await wait_until(pilot, lambda: screen.has_class("-offline"), what="offline")
            assert "late.sock" in str(screen.query_one("#banner").render())
            fake = FakeLxpyd(sock).start()
            try:
                await wait_until(pilot, lambda: len(rows(pilot)) == len(CONTAINERS), 5)
                assert not screen.has_class("-offline")
            finally:
                fake.stop()

    run(body(), timeout=20)


def test_columns_widen_to_numbers_that_come_later(fake_lxpyd: FakeLxpyd) -> None:
    # No stats at first: the CPU and MEMORY columns are as narrow as "-"
    # and their titles. Numbers that come with a later poll must fit.
    for ct in fake_lxpyd.containers:
        ct["stats"] = {}

    def shown_row(pilot: Any, name: str) -> str:
        table = dashboard(pilot).query_one("#containers", DataTable)
        lines = [table.render_line(y).text for y in range(table.size.height)]
        return next((line for line in lines if line.split()[:1] == [name]), "")

    async def body() -> None:
        app = LxpyApp(str(fake_lxpyd.socket), stats_interval=60)
        async with app.run_test(size=(100, 24)) as pilot:
            await wait_until(pilot, lambda: rows(pilot).get("db", ["", ""])[1] == "RUNNING")
            await wait_until(pilot, lambda: shown_row(pilot, "db").split()[4:6] == ["-", "-"])
            fake_lxpyd.container("db")["stats"] = {
                "cpu_percent": 127.4,
                "memory_bytes": 1023 * 2**20,
            }
            dashboard(pilot).poll()
            await wait_until(pilot, lambda: rows(pilot)["db"][4] == "127.4%", what="the poll")
            await wait_until(
                pilot,
                lambda: shown_row(pilot, "db").split()[4:6] == ["127.4%", "1023M"],
                what=f"whole numbers in {shown_row(pilot, 'db')!r}",
            )

    run(body(), timeout=20)
