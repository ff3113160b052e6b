"""Custom volumes (docs/devices.md, "Custom volumes") against a real lxpyd
and real containers: made and listed, mounted by a disk device, their data
outliving the container that wrote it, never snapshotted with it, and
not deleted while in use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lxpy.model.paths import PoolPaths
from tests.conftest import Daemon, info

pytestmark = pytest.mark.integration


def volumes(d: Daemon) -> list[dict[str, Any]]:
    return json.loads(d.cli("volume", "list", "--format", "json").stdout)


def sh(d: Daemon, name: str, script: str) -> str:
    return d.cli("exec", name, "--", "sh", "-c", script).stdout


def test_a_volume_holds_data_beyond_its_containers(daemon: Daemon) -> None:
    daemon.cli("template", "build", "busybox", timeout=300)
    daemon.cli("create", "a", "-t", "busybox")
    assert volumes(daemon) == []
    assert daemon.cli("volume", "create", "data").stdout == "created volume data\n"
    pool = PoolPaths(Path(str(info(daemon, "a")["path"])).parents[1])
    path = pool.volume("data")
    assert volumes(daemon) == [
        {"name": "data", "pool": "default", "path": str(path), "used_by": []}
    ]
    res = daemon.cli("volume", "create", "data", check=False)
    assert res.returncode == 1 and "already exists" in res.stderr
    res = daemon.cli("volume", "create", "Bad_Name", check=False)
    assert res.returncode == 1 and "invalid volume name" in res.stderr

    # A disk names it with pool=default source=VOLUME; a missing one is refused.
    res = daemon.cli(
        *("device", "add", "a", "d", "disk", "pool=default", "source=dta", "path=/data"),
        check=False,
    )
    assert res.returncode == 1 and "volume 'dta' not found" in res.stderr
    assert "did you mean 'data'?" in res.stderr
    daemon.cli("device", "add", "a", "d", "disk", "pool=default", "source=data", "path=/data")
    daemon.cli("start", "a")
    sh(daemon, "a", "echo kept > /data/f; mkdir /data/sub")
    assert (path / "f").read_text() == "kept\n"
    assert volumes(daemon)[0]["used_by"] == ["a"]
    assert "data  a" in daemon.cli("volume", "list").stdout

    # In use: not deleted.
    res = daemon.cli("volume", "delete", "data", check=False)
    assert res.returncode == 1 and "in use by a" in res.stderr
    assert (path / "f").exists()

    # Not snapshotted with the container: a restore leaves it as it is.
    daemon.cli("snapshot", "create", "a", "s0")
    sh(daemon, "a", "echo later > /data/f")
    daemon.cli("snapshot", "restore", "a", "s0")
    assert sh(daemon, "a", "cat /data/f") == "later\n"

    # Its data outlive the container that wrote them, for the next one.
    daemon.cli("destroy", "a", "--force")
    assert (path / "f").read_text() == "later\n"
    assert volumes(daemon)[0]["used_by"] == []
    daemon.cli("create", "b", "-t", "busybox")
    daemon.cli("device", "add", "b", "d", "disk", "pool=default", "source=data", "path=/srv/d")
    daemon.cli("start", "b")
    assert sh(daemon, "b", "cat /srv/d/f; ls -d /srv/d/sub") == "later\n/srv/d/sub\n"
    daemon.cli("device", "remove", "b", "d")
    assert daemon.cli("volume", "delete", "data").stdout == "deleted volume data\n"
    assert not path.exists() and volumes(daemon) == []
    res = daemon.cli("volume", "delete", "data", check=False)
    assert res.returncode == 1 and "volume 'data' not found" in res.stderr
