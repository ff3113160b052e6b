"""Host device nodes passed into running containers (lxpy.kernel.hostdev)
and the devices cgroup widened to exactly them (lxpy.kernel.devices).

Real lxpyd, real busybox containers; the block device is a loop device on
a file of the test's own. On this hybrid host the containers' list is the
v1 devices controller's; the v2 program replacement is tried on a scratch
cgroup2 directory as test_devices_v2.py does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument, LxpyError, NotFound
from lxpy.kernel import bpfdev, devices, hostdev
from lxpy.kernel.cgroups import ContainerCgroup, hierarchies
from tests.conftest import Daemon, info
from tests.integration.test_devices_v2 import EXPECTED, _kmsg_node, _probe, _remove

pytestmark = pytest.mark.integration

TIME_BOUND = 240


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    """A loop device over a 1 MiB file starting with a known sector."""
    img = tmp_path / "disk.img"
    img.write_bytes(b"LXPY-BLOCK-DEVICE".ljust(512, b"\0") + b"\0" * (1024 * 1024 - 512))
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(img)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _running(d: Daemon, short: str) -> tuple[str, int]:
    name = f"{short}-{os.getpid() % 100000}"
    d.cli("template", "build", "busybox")
    d.cli("create", name, "-t", "busybox")
    d.cli("start", name)
    return name, int(info(d, name)["init_pid"])


def sh(d: Daemon, name: str, script: str) -> subprocess.CompletedProcess[str]:
    return d.cli("exec", name, "--", "sh", "-c", script, check=False)


def plug(pid: int, cg: ContainerCgroup, host: Path, source: str, kind: str, path: str) -> str:
    node = hostdev.inspect(source, kind)
    uid = hostdev.host_id(pid, "uid", 1000)
    gid = hostdev.host_id(pid, "gid", 1000)
    hostdev.make_node(str(host), node, uid, gid, 0o640)
    rule = devices.node_rule(node.kind, node.major, node.minor)
    assert devices.change_extra(cg, [], [rule])
    hostdev.bind_in(pid, str(host), hostdev.check_path(path))
    return rule


def test_char_devices_passed_in_live(daemon: Daemon, tmp_path: Path) -> None:
    name, pid = _running(daemon, "chr")
    cg = daemon.cgroup(name)
    assert sh(daemon, name, "test -e /dev/fuse").returncode != 0
    host_before = {p: os.stat(p) for p in ("/dev/fuse", "/dev/net/tun")}
    rules = []
    for source, path in (("/dev/fuse", "/dev/fuse"), ("/dev/net/tun", "/dev/net/tun")):
        rules.append(
            plug(pid, cg, tmp_path / "nodes" / path.rsplit("/")[-1], source, "unix-char", path)
        )
        res = sh(daemon, name, f"exec 3<>{path} && stat -c '%u %g %a %t:%T' {path}")
        st = os.stat(source)
        want = f"1000 1000 640 {os.major(st.st_rdev):x}:{os.minor(st.st_rdev):x}"
        assert res.returncode == 0 and res.stdout.strip() == want, res.stderr
    # The host's own nodes are untouched.
    for source, was in host_before.items():
        assert os.stat(source) == was
    # Unplugged live: gone inside, mount point and all.
    for path in ("/dev/fuse", "/dev/net/tun"):
        hostdev.unbind(pid, path)
        assert sh(daemon, name, f"test -e {path}").returncode != 0
    assert devices.change_extra(cg, rules, [])
    hostdev.unbind(pid, "/dev/fuse")  # idempotent


def test_block_device_allowed_exactly(daemon: Daemon, tmp_path: Path, loopdev: str) -> None:
    name, pid = _running(daemon, "blk")
    cg = daemon.cgroup(name)
    node = hostdev.inspect(loopdev, "unix-block")
    host = tmp_path / "nodes" / "disk"
    hostdev.make_node(
        str(host), node, hostdev.host_id(pid, "uid", 0), hostdev.host_id(pid, "gid", 0), 0o660
    )
    # Bound but not yet allowed: the cgroup refuses the open.
    hostdev.bind_in(pid, str(host), "/dev/xvdb")
    read = "head -c 17 /dev/xvdb"
    refused = sh(daemon, name, read)
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
    rule = devices.node_rule("b", node.major, node.minor)
    assert devices.change_extra(cg, [], [rule])
    res = sh(daemon, name, read)
    assert res.returncode == 0 and res.stdout == "LXPY-BLOCK-DEVICE", res.stderr
    # Exactly it: the neighbouring minor is still refused (made inside: the
    # list lets no block node be made).
    other = f"mknod /dev/other b {node.major} {node.minor + 1}"
    assert sh(daemon, name, other).returncode != 0
    # Withdrawn live: the open is refused again, the node goes.
    assert devices.change_extra(cg, [rule], [])
    assert sh(daemon, name, read).returncode != 0
    hostdev.unbind(pid, "/dev/xvdb")
    assert sh(daemon, name, "test -e /dev/xvdb").returncode != 0
    # Default nodes were never affected.
    assert (
        sh(daemon, name, "echo x > /dev/null && head -c1 /dev/zero | wc -c").stdout.strip() == "1"
    )


def test_bad_nodes_refused_with_nothing_changed(daemon: Daemon, tmp_path: Path) -> None:
    name, pid = _running(daemon, "bad")
    with pytest.raises(NotFound, match="source /dev/no-such-node does not exist"):
        hostdev.inspect("/dev/no-such-node", "unix-char")
    with pytest.raises(InvalidArgument, match="source /dev/fuse is a character device"):
        hostdev.inspect("/dev/fuse", "unix-block")
    with pytest.raises(InvalidArgument, match="is not a device node"):
        hostdev.inspect("/etc/hostname", "unix-char")
    for bad in ("dev/fuse", "/dev/../etc/x", "/"):
        with pytest.raises(InvalidArgument, match="is not an absolute path inside"):
            hostdev.check_path(bad)
    with pytest.raises(InvalidArgument, match="bad mode '0999'"):
        hostdev.parse_mode("0999")
    with pytest.raises(InvalidArgument, match="uid 4000000000 is not mapped"):
        hostdev.host_id(pid, "uid", 4_000_000_000)
    # A symlink inside where the node would go (out to the host's /): refused,
    # nothing made, the link left as it was.
    assert sh(daemon, name, "ln -s / /dev/evil && mkdir -p /srv").returncode == 0
    host = tmp_path / "nodes" / "fuse"
    hostdev.make_node(str(host), hostdev.inspect("/dev/fuse", "unix-char"), 0, 0, 0o600)
    before = sh(daemon, name, "ls -la /dev /srv").stdout
    with pytest.raises(LxpyError, match="cannot bind a node onto /dev/evil"):
        hostdev.bind_in(pid, str(host), "/dev/evil")
    # A file where a parent directory would be: refused, the directories
    # made on the way removed again.
    assert sh(daemon, name, "mkdir /srv/a && touch /srv/a/b").returncode == 0
    with pytest.raises(LxpyError, match="cannot bind a node onto /srv/a/b/c/x"):
        hostdev.bind_in(pid, str(host), "/srv/a/b/c/x")
    with pytest.raises(LxpyError, match="cannot bind a node onto /srv/new/dir"):
        assert sh(daemon, name, "mkdir -p /srv/new/dir/x").returncode == 0
        assert sh(daemon, name, "rm -r /srv/new/dir/x").returncode == 0
        hostdev.bind_in(pid, str(host), "/srv/new/dir")
    assert sh(daemon, name, "rm -r /srv/a /srv/new").returncode == 0
    assert sh(daemon, name, "ls -la /dev /srv").stdout == before
    assert sh(daemon, name, "readlink /dev/evil").stdout.strip() == "/"


@pytest.fixture
def scratch2() -> Iterator[ContainerCgroup]:
    v2 = next(h for h in hierarchies() if h.version == 2)
    path = os.path.join(v2.mountpoint, f"lxpy-test-devplug-{os.getpid()}")
    os.mkdir(path)
    try:
        yield ContainerCgroup("scratch", [(v2, path)])
    finally:
        _remove(path)


def test_v2_program_replaced_live(scratch2: ContainerCgroup, tmp_path: Path) -> None:
    d = scratch2.unified
    assert d is not None
    runs = iter(range(10))

    def probe() -> dict[str, int]:
        # Each probe makes its nodes afresh, beside a kmsg node of its own.
        where = tmp_path / str(next(runs))
        where.mkdir()
        _kmsg_node(where)
        return _probe(d, where)

    assert devices.restrict(scratch2) is True
    assert probe() == EXPECTED
    first = bpfdev.attached(d)
    assert len(first) == 1
    kmsg = devices.node_rule("c", 1, 11)
    assert devices.change_extra(scratch2, [], [kmsg])
    assert probe() == {**EXPECTED, "open kmsg": 0}
    second = bpfdev.attached(d)
    assert len(second) == 1 and second != first
    assert devices.change_extra(scratch2, [kmsg], [])
    assert probe() == EXPECTED
    assert len(bpfdev.attached(d)) == 1
