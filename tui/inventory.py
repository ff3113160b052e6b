"""What the dashboard knows about the host's containers, and how a row reads.

Pure data, no Textual: the screen feeds it container objects (from a list,
a single GET or an event) and asks which rows changed, so the rules for
keeping up with lxpyd are testable without a terminal.

Fields beyond docs/api.md are read when the daemon sends them and shown as
"-" otherwise: `addresses` (a list of strings, or of objects with an
`address`), `started_at`, and `stats` with `cpu_seconds` or `cpu_usage_ns`
(cumulative, turned into a percentage between two polls) or `cpu_percent`,
and `memory_bytes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxpy.api.text import template_text

COLUMNS = ("NAME", "STATE", "TEMPLATE", "ADDRESSES", "CPU", "MEMORY", "UPTIME")
RUNNING_STATES = frozenset({"RUNNING", "FROZEN", "STOPPING"})

Row = tuple[str, str, str, str, str, str, str]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_time(text: object) -> datetime | None:
    """An ISO 8601 time from the API, or None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """42s, 12m05s, 3h05m, 2d04h: two units at most, to fit a narrow column."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float) -> str:
    """Binary units, one decimal under 10: 512B, 3.4M, 120M, 2.0G."""
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.1f}{unit}" if n < 10 else f"{n:.0f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def addresses(ct: dict[str, Any]) -> list[str]:
    """The container's addresses as text (empty when the daemon sends none)."""
    out = []
    for a in ct.get("addresses") or ():
        if isinstance(a, str):
            out.append(a)
        elif isinstance(a, dict) and a.get("address"):
            out.append(str(a["address"]))
    return out


def uptime(ct: dict[str, Any], now: datetime) -> str:
    if ct.get("state") not in RUNNING_STATES:
        return "-"
    started = parse_time(ct.get("started_at"))
    return "-" if started is None else format_duration((now - started).total_seconds())


@dataclass
class _CpuSample:
    usage_ns: int
    at: float


@dataclass
class Inventory:
    """The containers by name, their rows, and CPU samples for percentages.

    Args:
        clock: the wall clock for uptimes (fixed in snapshot tests).
        monotonic: the clock CPU percentages are measured on.
    """

    clock: Clock = utcnow
    monotonic: Callable[[], float] = time.monotonic
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cpu: dict[str, _CpuSample] = field(default_factory=dict)
    _cpu_pct: dict[str, float] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.containers)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.containers.get(name)

    def replace_all(self, cts: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
        """Take a full list: returns (names now present, names gone)."""
        fresh = {str(c.get("name")): c for c in cts if c.get("name")}
        gone = set(self.containers) - set(fresh)
        for name in gone:
            self.remove(name)
        for c in fresh.values():
            self.put(c)
        return set(fresh), gone

    def put(self, ct: dict[str, Any]) -> str:
        """Add or update one container; returns its name."""
        name = str(ct["name"])
        self._sample_cpu(name, ct)
        self.containers[name] = ct
        return name

    def remove(self, name: str) -> None:
        self.containers.pop(name, None)
        self._cpu.pop(name, None)
        self._cpu_pct.pop(name, None)

    def rename(self, old: str, new: str) -> bool:
        """Apply a rename from an event before the full object is fetched."""
        ct = self.containers.get(old)
        if ct is None:
            return False
        self.remove(old)
        self.put({**ct, "name": new})
        return True

    def set_state(self, name: str, state: str) -> bool:
        """Apply a state from an event before the full object is fetched."""
        ct = self.containers.get(name)
        if ct is None:
            return False
        self.containers[name] = {**ct, "state": state}
        return True

    def _sample_cpu(self, name: str, ct: dict[str, Any]) -> None:
        stats = ct.get("stats")
        usage = stats.get("cpu_usage_ns") if isinstance(stats, dict) else None
        secs = stats.get("cpu_seconds") if isinstance(stats, dict) else None
        if usage is None and isinstance(secs, int | float) and not isinstance(secs, bool):
            # lxpyd sends CPU time in seconds (cgroup usage, microsecond grain).
            usage = round(secs * 1e9)
        if not isinstance(usage, int) or isinstance(usage, bool):
            self._cpu.pop(name, None)
            self._cpu_pct.pop(name, None)
            return
        now = self.monotonic()
        prev = self._cpu.get(name)
        if prev is not None and now - prev.at >= 0.2 and usage >= prev.usage_ns:
            self._cpu_pct[name] = (usage - prev.usage_ns) / ((now - prev.at) * 1e9) * 100
        if prev is None or now - prev.at >= 0.2:
            self._cpu[name] = _CpuSample(usage, now)

    def cpu(self, name: str, ct: dict[str, Any]) -> str:
        stats = ct.get("stats") if isinstance(ct.get("stats"), dict) else {}
        pct = stats.get("cpu_percent") if stats else None
        if pct is None:
            pct = self._cpu_pct.get(name)
        if ct.get("state") not in RUNNING_STATES or not isinstance(pct, int | float):
            return "-"
        return f"{pct:.1f}%"

    def row(self, name: str) -> Row:
        """The cells of one container's row."""
        ct = self.containers[name]
        stats = ct.get("stats") if isinstance(ct.get("stats"), dict) else {}
        mem = stats.get("memory_bytes") if stats else None
        running = ct.get("state") in RUNNING_STATES
        return (
            name,
            str(ct.get("state") or "-"),
            template_text(ct.get("template")),
            ", ".join(addresses(ct)) or "-",
            self.cpu(name, ct),
            format_bytes(mem) if running and isinstance(mem, int | float) else "-",
            uptime(ct, self.clock()),
        )
