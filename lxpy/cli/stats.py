"""How the CLI shows resource use: the stats part of `lxpy info`, and `lxpy top`.

Stdlib only, like the CLI. The daemon sends cumulative counters (CPU
seconds, network bytes) with the time of the reading; rates (CPU %, bytes a
second) come from the difference between two readings.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from lxpy.api.client import Client

TOP_COLUMNS = ("NAME", "STATE", "CPU%", "MEMORY", "LIMIT", "PROCS", "NET RX/s", "NET TX/s")
_CLEAR = "\x1b[H\x1b[2J"


def format_bytes(n: object) -> str:
    """`1536` -> `1.5KiB`; "-" for a missing value."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"  # not reached


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _processes(stats: Mapping[str, Any]) -> str:
    count = stats.get("processes")
    limit = stats.get("processes_limit")
    text = str(count) if count is not None else "-"
    return text + (f" (limit {limit})" if limit is not None else " (no limit)")


def info_lines(stats: Mapping[str, Any] | None) -> list[str]:
    """The `stats:` section of `lxpy info` (a running container's use)."""
    if not stats:
        return ["stats:    -"]
    cpu = _num(stats.get("cpu_seconds"))
    mem = format_bytes(stats.get("memory_bytes"))
    extra = [f"peak {format_bytes(stats.get('memory_peak_bytes'))}"]
    limit = stats.get("memory_limit_bytes")
    extra.append(f"limit {format_bytes(limit)}" if limit is not None else "no limit")
    lines = [
        "stats:",
        f"  cpu time:   {cpu:.2f} s" if cpu is not None else "  cpu time:   -",
        f"  memory:     {mem} ({', '.join(extra)})",
        f"  swap:       {format_bytes(stats.get('swap_bytes'))}",
        f"  oom kills:  {stats.get('oom_kills') if stats.get('oom_kills') is not None else '-'}",
        f"  processes:  {_processes(stats)}",
        f"  disk:       {format_bytes(stats.get('disk_bytes'))}",
    ]
    net = stats.get("network") or {}
    lines.append("  network:" + ("" if net else "    -"))
    for iface in sorted(net):
        rx, tx = format_bytes(net[iface].get("rx_bytes")), format_bytes(net[iface].get("tx_bytes"))
        lines.append(f"    {iface}: rx {rx}, tx {tx}")
    return lines


class _Sample:
    __slots__ = ("at", "cpu", "rx", "tx")

    def __init__(self, at: float, cpu: float | None, rx: int, tx: int) -> None:
        self.at = at
        self.cpu = cpu
        self.rx = rx
        self.tx = tx


def _sample(stats: Mapping[str, Any]) -> _Sample:
    net = stats.get("network") or {}
    # The container's own traffic: loopback is not network use.
    ifaces = [c for name, c in net.items() if name != "lo"]
    return _Sample(
        float(stats.get("at") or time.time()),
        _num(stats.get("cpu_seconds")),
        sum(int(c.get("rx_bytes") or 0) for c in ifaces),
        sum(int(c.get("tx_bytes") or 0) for c in ifaces),
    )


class Top:
    """Rows of `lxpy top` from successive container lists."""

    def __init__(self) -> None:
        self.prev: dict[str, _Sample] = {}

    def rows(self, containers: Iterable[Mapping[str, Any]]) -> list[tuple[str, ...]]:
        """One row per running container, busiest CPU first."""
        rows: list[tuple[float, tuple[str, ...]]] = []
        seen: dict[str, _Sample] = {}
        for ct in containers:
            stats = ct.get("stats")
            if not isinstance(stats, dict):
                continue
            name = str(ct.get("name", ""))
            now = _sample(stats)
            seen[name] = now
            before = self.prev.get(name)
            pct = rx = tx = None
            if before is not None and now.at > before.at:
                span = now.at - before.at
                if now.cpu is not None and before.cpu is not None:
                    pct = max(0.0, (now.cpu - before.cpu) / span * 100)
                rx = max(0.0, (now.rx - before.rx) / span)
                tx = max(0.0, (now.tx - before.tx) / span)
            rows.append(
                (
                    pct or 0.0,
                    (
                        name,
                        str(ct.get("state", "")),
                        f"{pct:.1f}" if pct is not None else "-",
                        format_bytes(stats.get("memory_bytes")),
                        format_bytes(stats.get("memory_limit_bytes")),
                        str(stats.get("processes") if stats.get("processes") is not None else "-"),
                        format_bytes(rx) if rx is not None else "-",
                        format_bytes(tx) if tx is not None else "-",
                    ),
                )
            )
        self.prev = seen
        rows.sort(key=lambda r: (-r[0], r[1][0]))
        return [r for _pct, r in rows]

    def frame(self, containers: Iterable[Mapping[str, Any]], clock: str = "") -> str:
        """The text of one screen: a header line and the table."""
        rows = self.rows(containers)
        table = [TOP_COLUMNS, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(TOP_COLUMNS))]
        out = [f"lxpy top - {clock or time.strftime('%H:%M:%S')} - {len(rows)} running"]
        for r in table:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if not rows:
            out.append("(no running containers)")
        return "\n".join(out) + "\n"


def _key_pressed(timeout: float) -> str:
    """A key typed within `timeout` seconds (stdin in cbreak mode), or ""."""
    ready, _w, _x = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return ""
    return os.read(sys.stdin.fileno(), 32).decode(errors="replace")


def run_top(client: Client, interval: float = 1.0, once: bool = False) -> int:
    """`lxpy top`: redraw every `interval` seconds until Ctrl-C or `q`.

    With `once`, print one frame (two readings `min(interval, 0.5)` s apart,
    for the rates) without clearing the screen.
    """
    top = Top()
    if once:
        top.rows(client.containers(stats=True))
        time.sleep(min(interval, 0.5))
        sys.stdout.write(top.frame(client.containers(stats=True)))
        return 0
    tty_fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
    saved: list[Any] | None = None
    if tty_fd >= 0:
        import termios
        import tty

        # cbreak: `q` arrives without Enter, and Ctrl-C still interrupts.
        saved = termios.tcgetattr(tty_fd)
        tty.setcbreak(tty_fd)
    try:
        while True:
            sys.stdout.write(_CLEAR + top.frame(client.containers(stats=True)))
            sys.stdout.flush()
            if tty_fd < 0:
                time.sleep(interval)
            elif "q" in _key_pressed(interval).lower():
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(tty_fd, termios.TCSADRAIN, saved)
