"""CPU balancing, the launch spec's limits fields, the lxcfs setting, and the
CLI's stats views (`lxpy info`, `lxpy top`): pure functions, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxpy.cli.stats import Top, format_bytes, info_lines
from lxpy.daemon.resources import balance, limits_config
from lxpy.errors import InvalidArgument
from lxpy.model.settings import settings_from_mapping
from lxpy.runtime.spec import LaunchSpec


def test_balance_spreads_quotas_over_the_least_used_cpus() -> None:
    cpus = (0, 1, 2, 3)
    got = balance({"a": 1, "b": 1, "c": 2, "d": 1}, [], cpus)
    # Bigger wants first (c), then by name; each takes the least used CPUs.
    assert got == {"c": (0, 1), "a": (2,), "b": (3,), "d": (0,)}
    # Pinned containers count as load.
    assert balance({"a": 1}, [(0, 1, 2)], cpus) == {"a": (3,)}
    # More than the host has: all of them.
    assert balance({"a": 9}, [], (0, 1)) == {"a": (0, 1)}
    # Deterministic: the same inputs, the same answer.
    assert balance({"x": 1, "y": 1}, [(5,)], cpus) == balance({"y": 1, "x": 1}, [(5,)], cpus)


def test_limits_config_keeps_only_limits() -> None:
    config = {"limits.memory": "64MiB", "boot.autostart": True, "hostname": "h"}
    assert limits_config(config) == {"limits.memory": "64MiB"}


def test_launch_spec_carries_limits_cpus_and_lxcfs(tmp_path: Path) -> None:
    spec = LaunchSpec(
        name="c",
        rootfs=str(tmp_path),
        control_socket=str(tmp_path / "s"),
        limits={"limits.cpu": "0.5"},
        cpus=(1,),
        lxcfs="/var/lib/lxcfs",
    )
    data = spec.to_json()
    assert data["cpus"] == [1] and data["limits"] == {"limits.cpu": "0.5"}
    assert LaunchSpec.from_json(data) == spec
    with pytest.raises(InvalidArgument, match="limits"):
        LaunchSpec.from_json({**data, "limits": {"hostname": "x"}})
    with pytest.raises(InvalidArgument, match="cpus"):
        LaunchSpec.from_json({**data, "cpus": ["0"]})


def test_lxcfs_setting() -> None:
    s = settings_from_mapping({"lxcfs": "off", "lxcfs_mount": "/run/x/lxcfs"})
    assert s.lxcfs == "off" and str(s.lxcfs_mount) == "/run/x/lxcfs"
    assert settings_from_mapping({}).lxcfs == "auto"
    with pytest.raises(InvalidArgument, match="lxcfs"):
        settings_from_mapping({"lxcfs": "maybe"})


def test_format_bytes() -> None:
    assert format_bytes(512) == "512B"
    assert format_bytes(1536) == "1.5KiB"
    assert format_bytes(64 << 20) == "64.0MiB"
    assert format_bytes(None) == "-"


def _ct(name: str, at: float, cpu: float, rx: int, mem: int = 10 << 20) -> dict[str, object]:
    return {
        "name": name,
        "state": "RUNNING",
        "stats": {
            "at": at,
            "cpu_seconds": cpu,
            "memory_bytes": mem,
            "memory_limit_bytes": None,
            "processes": 3,
            "network": {"eth0": {"rx_bytes": rx, "tx_bytes": 0}, "lo": {"rx_bytes": 10**9}},
        },
    }


def test_top_rates_from_two_readings() -> None:
    top = Top()
    first = top.rows([_ct("a", 100.0, 1.0, 0), _ct("b", 100.0, 5.0, 0)])
    assert [r[2] for r in first] == ["-", "-"]
    rows = top.rows(
        [
            _ct("a", 102.0, 1.5, 2048),
            _ct("b", 102.0, 7.0, 0),
            {"name": "off", "state": "STOPPED", "stats": None},
        ]
    )
    # Busiest first; stopped containers are not shown.
    assert [r[0] for r in rows] == ["b", "a"]
    assert rows[0][2] == "100.0" and rows[1][2] == "25.0"
    assert rows[1][6] == "1.0KiB"  # 2048 bytes in 2 s, loopback left out
    assert rows[1][3] == "10.0MiB" and rows[1][4] == "-" and rows[1][5] == "3"
    frame = top.frame([], clock="12:00:00")
    assert "0 running" in frame and "no running containers" in frame


def test_info_lines() -> None:
    stats = {
        "cpu_seconds": 1.25,
        "memory_bytes": 1 << 20,
        "memory_peak_bytes": 2 << 20,
        "memory_limit_bytes": 64 << 20,
        "swap_bytes": 0,
        "oom_kills": 2,
        "processes": 4,
        "processes_limit": 4915,
        "disk_bytes": 3 << 20,
        "network": {"eth0": {"rx_bytes": 1024, "tx_bytes": 2048}},
    }
    text = "\n".join(info_lines(stats))
    assert "cpu time:   1.25 s" in text
    assert "1.0MiB (peak 2.0MiB, limit 64.0MiB)" in text
    assert "oom kills:  2" in text and "processes:  4 (limit 4915)" in text
    unlimited = {**stats, "processes_limit": None}
    assert "processes:  4 (no limit)" in "\n".join(info_lines(unlimited))
    assert "eth0: rx 1.0KiB, tx 2.0KiB" in text
    assert info_lines(None) == ["stats:    -"]
