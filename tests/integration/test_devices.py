"""Devices of containers (docs/devices.md), against a real lxpyd and real
containers: the record, the API and CLI, validation, copy and snapshots,
and `disk` devices mounted at start and hot-plugged into running ones."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, info, start_again, stop_daemon, wait_for

pytestmark = pytest.mark.integration


def devices(d: Daemon, name: str) -> list[dict[str, Any]]:
    return json.loads(d.cli("device", "list", name, "--format", "json").stdout)


def record(d: Daemon, name: str) -> str:
    return d.paths.record(name).read_text()


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


def sh(d: Daemon, name: str, script: str, check: bool = True) -> str:
    res = d.cli("exec", name, "--", "sh", "-c", script, check=check)
    return res.stdout if check else res.stdout + res.stderr


def owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def mounted_in(pid: int, path: str) -> bool:
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return any(line.split()[4] == path for line in lines)


def test_a_disk_is_shared_both_ways_with_the_owners_expected(
    daemon: Daemon, tmp_path: Path
) -> None:
    busybox(daemon, "web")
    shared, ro, raw = tmp_path / "shared", tmp_path / "ro", tmp_path / "raw"
    for p in (shared, ro, raw):
        p.mkdir()
        p.chmod(0o777)
    (shared / "from-host").write_text("host\n")
    os.chown(shared / "from-host", 1000, 1000)
    (ro / "kept").write_text("kept\n")
    (raw / "from-host").write_text("raw\n")
    os.chown(raw / "from-host", 1000, 1000)
    daemon.cli("device", "add", "web", "rw", "disk", f"source={shared}", "path=/srv/shared")
    daemon.cli(
        "device", "add", "web", "ro", "disk", f"source={ro}", "path=/srv/ro", "readonly=true"
    )
    daemon.cli("device", "add", "web", "raw", "disk", f"source={raw}", "path=/raw", "shift=false")
    daemon.cli("device", "add", "web", "file", "disk", f"source={ro}/kept", "path=/etc/kept")
    daemon.cli("start", "web")
    ct = info(daemon, "web")
    base = ct["idmap"]["uid_base"]
    assert base > 0 and "unprivileged" in ct["security"]

    # shift=true (the default): an ID is the same inside and on the host.
    assert sh(daemon, "web", "cat /srv/shared/from-host") == "host\n"
    assert sh(daemon, "web", "ls -ln /srv/shared/from-host").split()[2:4] == ["1000", "1000"]
    sh(daemon, "web", "echo ct > /srv/shared/from-ct; chown 1000:1000 /srv/shared/from-ct")
    sh(daemon, "web", "echo root > /srv/shared/root-made")
    assert (shared / "from-ct").read_text() == "ct\n"
    assert owner(shared / "from-ct") == (1000, 1000)
    assert owner(shared / "root-made") == (0, 0)
    # shift=false: the container's range maps them (root inside is base).
    sh(daemon, "web", "echo ct > /raw/from-ct")
    assert owner(raw / "from-ct") == (base, base)
    assert sh(daemon, "web", "ls -ln /raw/from-host").split()[2:4] == ["65534", "65534"]
    # readonly: nothing is written through it; a file source is a file.
    err = sh(daemon, "web", "touch /srv/ro/new", check=False)
    assert "Read-only file system" in err
    assert not (ro / "new").exists()
    assert sh(daemon, "web", "cat /etc/kept") == "kept\n"
    assert all(d["active"] for d in devices(daemon, "web"))

    # It is config: after a restart of the container, and of lxpyd.
    daemon.cli("restart", "web")
    assert sh(daemon, "web", "cat /srv/shared/from-ct") == "ct\n"
    pid = info(daemon, "web")["init_pid"]
    stop_daemon(daemon)
    again = start_again(daemon, daemon.root.parent / "lxpyd-again.log")
    try:
        assert info(again, "web")["init_pid"] == pid
        assert sh(again, "web", "cat /srv/shared/from-host") == "host\n"
        assert all(d["active"] for d in devices(again, "web"))
        again.cli("stop", "web")
        again.cli("start", "web")
        assert sh(again, "web", "cat /srv/ro/kept") == "kept\n"
    finally:
        stop_daemon(again)
        daemon.proc = again.proc


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_a_disk_is_hot_plugged_and_unplugged_on_a_running_container(
    daemon: Daemon, tmp_path: Path, privileged: bool
) -> None:
    busybox(daemon, "web")
    if privileged:
        daemon.cli("config", "set", "web", "security.privileged", "true")
    hot = tmp_path / "hot"
    hot.mkdir()
    (hot / "f").write_text("hot\n")
    daemon.cli("start", "web")
    pid = info(daemon, "web")["init_pid"]
    before = record(daemon, "web")

    # Refused with nothing changed: not in the record, nothing mounted.
    assert "does not exist" in refused(
        daemon, "device", "add", "web", "hot", "disk", f"source={tmp_path}/no", "path=/mnt/hot"
    )
    assert record(daemon, "web") == before and not mounted_in(pid, "/mnt/hot")

    out = daemon.cli("device", "add", "web", "hot", "disk", f"source={hot}", "path=/mnt/hot/x")
    assert out.stdout == "added disk device hot to web (in effect now)\n"
    assert mounted_in(pid, "/mnt/hot/x")
    assert sh(daemon, "web", "cat /mnt/hot/x/f") == "hot\n"
    sh(daemon, "web", "echo back > /mnt/hot/x/g")
    assert (hot / "g").read_text() == "back\n"
    assert owner(hot / "g") == (0, 0)
    assert devices(daemon, "web")[0]["active"] is True
    # The mount point was made inside the rootfs, owned by root inside.
    assert sh(daemon, "web", "ls -lnd /mnt/hot").split()[2:4] == ["0", "0"]

    # A symlink the container plants leads inside it, never to the host.
    sh(daemon, "web", "mkdir -p /inside && ln -s /inside /mnt/trap")
    daemon.cli("device", "add", "web", "trap", "disk", f"source={hot}", "path=/mnt/trap/t")
    assert sh(daemon, "web", "cat /inside/t/f") == "hot\n"
    assert not Path("/inside").exists()

    daemon.cli("device", "remove", "web", "hot", "trap")
    assert not mounted_in(pid, "/mnt/hot/x")
    assert sh(daemon, "web", "ls /mnt/hot/x") == ""
    # Again, on the mount point that is there now.
    daemon.cli("device", "add", "web", "hot", "disk", f"source={hot}", "path=/mnt/hot/x")
    assert sh(daemon, "web", "cat /mnt/hot/x/f") == "hot\n"
    daemon.cli("device", "remove", "web", "hot")
    assert not mounted_in(pid, "/mnt/hot/x")
    assert (hot / "f").exists() and devices(daemon, "web") == []
    assert info(daemon, "web")["init_pid"] == pid


def test_a_reboot_inside_keeps_the_disks_as_they_were_changed_live(
    daemon: Daemon, tmp_path: Path
) -> None:
    busybox(daemon, "web")
    old, new = tmp_path / "old", tmp_path / "new"
    for p in (old, new):
        p.mkdir()
        (p / "f").write_text(p.name + "\n")
    daemon.cli("device", "add", "web", "old", "disk", f"source={old}", "path=/old")
    daemon.cli("start", "web")
    daemon.cli("device", "remove", "web", "old")
    daemon.cli("device", "add", "web", "new", "disk", f"source={new}", "path=/new")
    pid = info(daemon, "web")["init_pid"]
    subprocess.run(["nsenter", "-a", "-t", str(pid), "reboot"], check=True, timeout=30)
    ct = wait_for(
        lambda: (
            (c := info(daemon, "web"))["init_pid"] not in (None, pid)
            and c["state"] == "RUNNING"
            and c
        ),
        30,
        "the reboot",
    )
    again = ct["init_pid"]
    wait_for(lambda: mounted_in(again, "/new"), 15, "the live disk in the new boot")
    wait_for(lambda: not mounted_in(again, "/old"), 15, "the removed disk gone")
    assert sh(daemon, "web", "cat /new/f") == "new\n"


def test_a_debian_container_boots_with_disks_and_gets_one_live(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.cli("template", "build", "debian-bookworm", timeout=1800)
    daemon.cli("create", "deb", "-t", "debian-bookworm")
    share, docs = tmp_path / "share", tmp_path / "docs"
    for p in (share, docs):
        p.mkdir()
        p.chmod(0o777)
    (share / "from-host").write_text("host\n")
    os.chown(share / "from-host", 1000, 1000)
    (docs / "readme").write_text("docs\n")
    daemon.cli("device", "add", "deb", "share", "disk", f"source={share}", "path=/srv/share")
    daemon.cli("start", "deb", "--wait", timeout=180)
    # systemd boots to running with the disk mounted before it.
    state = daemon.cli("exec", "deb", "--", "systemctl", "is-system-running", check=False)
    assert state.stdout.strip() == "running", state
    assert sh(daemon, "deb", "stat -c '%u %g' /srv/share/from-host") == "1000 1000\n"
    # A Debian user's file (www-data: 33) is 33's on the host too.
    daemon.cli("exec", "deb", "--user", "www-data", "--", "touch", "/srv/share/by-www-data")
    assert owner(share / "by-www-data") == (33, 33)
    sh(daemon, "deb", "echo root > /srv/share/by-root")
    assert owner(share / "by-root") == (0, 0)
    # Live, read-only, seen by systemd's own view of the mounts.
    daemon.cli(
        *("device", "add", "deb", "docs", "disk", f"source={docs}", "path=/usr/share/site"),
        "readonly=true",
    )
    assert sh(daemon, "deb", "cat /usr/share/site/readme") == "docs\n"
    found = sh(daemon, "deb", "findmnt -n -o OPTIONS /usr/share/site")
    assert "ro" in found.split(",")
    daemon.cli("device", "remove", "deb", "docs")
    assert sh(daemon, "deb", "findmnt -n /usr/share/site || echo none") == "none\n"
    daemon.cli("stop", "deb")


def test_required_false_starts_without_a_missing_source(daemon: Daemon, tmp_path: Path) -> None:
    busybox(daemon, "web")
    later = tmp_path / "later"
    args = ("device", "add", "web", "opt", "disk", f"source={later}", "path=/opt/later")
    assert "does not exist" in refused(daemon, *args)
    daemon.cli(*args, "required=false")
    daemon.cli("start", "web")
    pid = info(daemon, "web")["init_pid"]
    assert not mounted_in(pid, "/opt/later")
    assert devices(daemon, "web")[0]["active"] is False
    # There at the next start once it exists.
    later.mkdir()
    (later / "f").write_text("now\n")
    daemon.cli("restart", "web")
    assert sh(daemon, "web", "cat /opt/later/f") == "now\n"
    assert devices(daemon, "web")[0]["active"] is True
    # Added live without its source: recorded, not in effect.
    out = daemon.cli(
        *("device", "add", "web", "gone", "disk", f"source={tmp_path}/gone", "path=/gone"),
        "required=false",
    )
    assert out.stdout == "added disk device gone to web\n"
    assert [d["active"] for d in devices(daemon, "web")] == [False, True]
    daemon.cli("device", "remove", "web", "gone")
    # Required (the default), a source gone since fails the start, naming it.
    daemon.cli("stop", "web")
    (later / "sub").mkdir()
    daemon.cli("device", "add", "web", "must", "disk", f"source={later}/sub", "path=/m")
    (later / "sub").rmdir()
    err = refused(daemon, "start", "web")
    assert "device 'must'" in err and f"{later}/sub does not exist" in err, err
    assert info(daemon, "web")["state"] == "STOPPED"
