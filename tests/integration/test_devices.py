"""Devices of containers (docs/devices.md), against a real lxpyd and real
containers: the record, the API and CLI, validation, copy and snapshots,
and `disk` devices mounted at start and hot-plugged into running ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, info

pytestmark = pytest.mark.integration


def devices(d: Daemon, name: str) -> list[dict[str, Any]]:
    return json.loads(d.cli("device", "list", name, "--format", "json").stdout)  # type: ignore[no-any-return]


def record(d: Daemon, name: str) -> str:
    return (d.root / "containers" / f"{name}.toml").read_text()


def busybox(d: Daemon, name: str) -> None:
    d.cli("template", "build", "busybox", timeout=300)
    d.cli("create", name, "--template", "busybox")


def refused(d: Daemon, *args: str) -> str:
    res = d.cli(*args, check=False)
    assert res.returncode == 1, res
    return res.stderr


def test_devices_are_part_of_the_record_and_bad_ones_change_nothing(
    daemon: Daemon, tmp_path: Path
) -> None:
    busybox(daemon, "web")
    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "afile").write_text("x")
    before = record(daemon, "web")

    # Each refusal names what is wrong, and the record is as it was.
    cases = [
        (["web", "www", "disk", f"source={share}", "path=/srv", "colour=red"], "'colour'"),
        (["web", "www", "disk", f"source={share}", "path=/srv", "readonly=maybe"], "readonly"),
        (["web", "www", "disk", f"source={share}"], "needs path"),
        (["web", "www", "disk", f"source={tmp_path}/nothing", "path=/srv"], "does not exist"),
        (["web", "www", "disk", f"source={share}", "path=srv"], "absolute path"),
        (["web", "www", "disk", f"source={share}", "path=/srv/../../etc"], "'..'"),
        (["web", "www", "disk", f"source={share}", "path=/proc/x"], "/proc"),
        (["web", "www", "disk", "source=/dev/null", "path=/srv"], "neither a directory"),
        (["web", "www", "disk", f"source={tmp_path}/afile", "path=/bin"], "is not a file"),
        (["web", "www", "disk", "source=rel", "path=/srv"], "absolute host path"),
        (["web", "www", "nope", "source=/x"], "unknown device type 'nope'"),
        (["web", "bad/name", "disk", f"source={share}", "path=/srv"], "invalid device name"),
        (["web", "www", "disk", "source=vol", "pool=other", "path=/srv"], "one storage pool"),
        (["nosuch", "www", "disk", f"source={share}", "path=/srv"], "'nosuch'"),
    ]
    for args, why in cases:
        assert why in refused(daemon, "device", "add", *args), args
        assert record(daemon, "web") == before
    assert devices(daemon, "web") == []

    # A symlink in the rootfs leads inside it, never out: /srv/out -> /
    # resolves to the container's own root, which is a directory.
    rootfs = Path(str(info(daemon, "web")["path"]))
    os.symlink("/etc/passwd", rootfs / "srv-link")
    assert "is not a directory" in refused(
        daemon, "device", "add", "web", "www", "disk", f"source={share}", "path=/srv-link"
    )

    daemon.cli("device", "add", "web", "www", "disk", f"source={share}", "path=/srv/www")
    daemon.cli("device", "add", "web", "ro", "disk", f"source={share}", "path=/ro", "readonly=1")
    assert devices(daemon, "web") == [
        {
            "name": "ro",
            "type": "disk",
            "config": {"source": str(share), "path": "/ro", "readonly": "true"},
            "active": False,
        },
        {
            "name": "www",
            "type": "disk",
            "config": {"source": str(share), "path": "/srv/www"},
            "active": False,
        },
    ]
    assert "[devices.www]" in record(daemon, "web")
    show = daemon.cli("device", "show", "web", "ro").stdout
    assert "type: disk" in show and "readonly: true" in show
    listed = daemon.cli("device", "list", "web").stdout
    assert f"www   disk  no      path=/srv/www source={share}" in listed
    assert f"  www: disk path=/srv/www source={share}" in daemon.cli("info", "web").stdout

    # The name is taken; the same path twice is refused too.
    assert "already" in refused(
        daemon, "device", "add", "web", "www", "disk", f"source={share}", "path=/x"
    )
    assert "path of device 'www'" in refused(
        daemon, "device", "add", "web", "w2", "disk", f"source={share}", "path=/srv/www"
    )
    assert "has no device 'wwx'" in refused(daemon, "device", "remove", "web", "wwx")
    assert "did you mean 'www'?" in refused(daemon, "device", "show", "web", "wwx")

    # Copied with the container; kept in its snapshots and restored with them.
    daemon.cli("copy", "web", "web2")
    assert [d["name"] for d in devices(daemon, "web2")] == ["ro", "www"]
    daemon.cli("snapshot", "create", "web", "s0")
    daemon.cli("device", "remove", "web", "www")
    daemon.cli("device", "add", "web", "new", "disk", f"source={share}", "path=/new")
    assert [d["name"] for d in devices(daemon, "web")] == ["new", "ro"]
    daemon.cli("snapshot", "restore", "web", "s0")
    assert [d["name"] for d in devices(daemon, "web")] == ["ro", "www"]
    daemon.cli("snapshot", "delete", "web", "s0")
    assert "snapshots" not in record(daemon, "web")
    out = json.loads(daemon.cli("info", "web", "--format", "json").stdout)
    assert sorted(out["devices"]) == ["ro", "www"]
