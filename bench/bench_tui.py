"""lxpy-tui with 200 containers: the dashboard's first full render, the
time from a state change in lxpyd to its row showing it, and from a new
container to its row.

Run as root: .venv/bin/python bench/bench_tui.py [--count 200] [--runs 5] [--changes 20]

It starts its own lxpyd on a scratch root (with its own loop-file btrfs
pool), creates the containers from the busybox template, runs the app
headless (Textual's test driver, the same rendering as a terminal) and
removes everything at the end. The state change is a start/stop when the
daemon serves them, else a rename (also a lifecycle event that changes a
visible cell).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from textual.widgets import DataTable  # noqa: E402

from lxpy.api.client import Client  # noqa: E402
from lxpy.errors import NotFound  # noqa: E402
from tests.conftest import daemon_in  # noqa: E402
from tui.app import LxpyApp  # noqa: E402
from tui.screens.dashboard import DashboardScreen  # noqa: E402

SIZE = (160, 50)


def _table(app: LxpyApp) -> DataTable[Any]:
    screen = next(s for s in app.screen_stack if isinstance(s, DashboardScreen))
    return screen.query_one("#containers", DataTable)


def _cell(app: LxpyApp, name: str, column: int) -> str | None:
    table = _table(app)
    try:
        return str(table.get_row(name)[column])
    except Exception:  # no such row (yet, or any more)
        return None


async def _until(check: Any, limit: float = 30) -> float:
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > limit:
            raise TimeoutError("the dashboard did not show the change in time")
        await asyncio.sleep(0.001)
    return time.perf_counter() - t0


async def first_render(socket: str, count: int) -> float:
    """Seconds from starting the app to the first frame with every row."""
    t0 = time.perf_counter()
    app = LxpyApp(socket)
    async with app.run_test(size=SIZE) as pilot:
        await _until(lambda: _table(app).row_count == count)
        await pilot.pause()  # the frame that draws them
        took = time.perf_counter() - t0
        await pilot.press("q")
    return took


async def state_changes(
    socket: str, client: Client, changes: int
) -> tuple[str, list[float], list[float]]:
    """Milliseconds from asking lxpyd for the change to the row showing it
    (the daemon's own work included; a stop is forced so it is short)."""
    out: list[float] = []
    daemon_ms: list[float] = []
    # No periodic refresh: the figure is the event path's.
    app = LxpyApp(socket, stats_interval=3600)
    async with app.run_test(size=SIZE):
        await _until(lambda: _table(app).row_count > 0)
        try:
            await asyncio.to_thread(client.request, "POST", "/1.0/containers/c0000/start")
            kind = "start/stop"
        except NotFound:
            kind = "rename"
        for i in range(changes):
            if kind == "start/stop":
                verb, want = ("stop", "STOPPED") if i % 2 == 0 else ("start", "RUNNING")
                body = {"force": True} if verb == "stop" else None
                path = f"/1.0/containers/c0000/{verb}"
                sent = time.perf_counter()
                await asyncio.to_thread(client.request, "POST", path, body)
                daemon_ms.append((time.perf_counter() - sent) * 1000)
                await _until(lambda w=want: _cell(app, "c0000", 1) == w)
            else:
                old, new = ("c0000", "c0000x") if i % 2 == 0 else ("c0000x", "c0000")
                sent = time.perf_counter()
                await asyncio.to_thread(client.rename_container, old, new)
                daemon_ms.append((time.perf_counter() - sent) * 1000)
                await _until(lambda n=new: _cell(app, n, 0) == n)
            out.append((time.perf_counter() - sent) * 1000)
        if kind == "start/stop" and _cell(app, "c0000", 1) != "STOPPED":
            await asyncio.to_thread(
                client.request, "POST", "/1.0/containers/c0000/stop", {"force": True}
            )
    return kind, out, daemon_ms


async def new_rows(socket: str, client: Client, changes: int) -> list[float]:
    """Milliseconds from asking lxpyd for a new container (a copy, as
    cheap as a create) to its row showing; each is deleted again."""
    out: list[float] = []
    app = LxpyApp(socket, stats_interval=3600)
    async with app.run_test(size=SIZE):
        await _until(lambda: _table(app).row_count > 0)
        for i in range(changes):
            name = f"new{i:04d}"
            sent = time.perf_counter()
            await asyncio.to_thread(client.copy_container, "c0000", name)
            await _until(lambda n=name: _cell(app, n, 0) == n)
            out.append((time.perf_counter() - sent) * 1000)
            await asyncio.to_thread(client.delete_container, name)
    return out


def row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[max(0, int(len(ms) * 0.9) - 1)]
    return f"{label:<48}{len(ms):>5}{statistics.median(ms):>9.1f}{p90:>9.1f}{ms[-1]:>9.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lxpy-bench-tui-"))
    try:
        # No network: the figures are the TUI's, and the host's lxpybr0 may
        # belong to another lxpyd.
        with daemon_in(scratch, 'pool_size = "2GiB"\ndefault_network = ""\n') as daemon:
            client = Client(daemon.socket, timeout=120)
            t0 = time.perf_counter()
            client.create_container("c0000", "busybox")
            for i in range(1, args.count):
                client.copy_container("c0000", f"c{i:04d}")
            print(f"made {args.count} containers in {time.perf_counter() - t0:.1f} s")

            renders = [
                asyncio.run(first_render(str(daemon.socket), args.count)) * 1000
                for _ in range(args.runs)
            ]
            kind, lags, daemon_ms = asyncio.run(
                state_changes(str(daemon.socket), client, args.changes)
            )
            appeared = asyncio.run(new_rows(str(daemon.socket), client, args.changes))

            print(f"\n{'figure':<48}{'n':>5}{'median':>9}{'p90':>9}{'max':>9}")
            print(row(f"first full render, {args.count} rows (ms)", renders))
            print(row(f"request -> row updated, {kind} (ms)", lags))
            print(row(f"  of which lxpyd's answer to the {kind} (ms)", daemon_ms))
            print(row("request -> new row shown, a copy (ms)", appeared))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
