"""Nothing in a rootfs can stall lxpyd, or reach the host through it.

Root in a container owns its rootfs. At the paths lxpyd reads and writes
on the host side (/etc/hostname, /etc/hosts, the init, the tree the disk
use is summed over, the files a template's setup touches) it plants what
a hostile root would: a FIFO (an open blocks for ever), a symlink to a
host file (a temp file of the test's, checked unchanged, content and
mtime), a device node (a block node of a loop device backed by another
file of the test's: a write through it would change that file) and a
sparse file of 10 GiB. Then create, copy, start, info and config set run
against a real lxpyd, and each must end: the container starts, or the
start fails with an error naming the path; no host file changes; and
lxpyd answers other requests (GET /1.0, another container's config set)
within a second the whole time, also with five poisoned containers
started at once.

Busybox containers (unprivileged, as by default): they build in a second
and have mkfifo, ln and truncate. An unprivileged root cannot make device
nodes, so those are planted in the stopped container's rootfs through the
pool, as a privileged container or a restored snapshot could leave them.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from lxpy.api.client import Client
from lxpy.build.builder import build_rootfs
from lxpy.errors import LxpyError
from lxpy.model.template import parse_template
from tests.conftest import VENV_BIN, Daemon, info

pytestmark = pytest.mark.integration
TIME_BOUND = 300

HUGE = 10 << 30
KINDS = ("fifo", "host-symlink", "device", "huge")


# -- what the test owns on the host ------------------------------------------
class HostFiles:
    """A host file for symlinks to point at, and a loop device (backed by
    another host file) for device nodes: neither may change."""

    def __init__(self, tmp: Path) -> None:
        self.target = tmp / "host-secret"
        self.target.write_text("host data, not the container's\n")
        self.backing = tmp / "host-disk"
        self.backing.write_bytes(b"host disk block\n" * 4096)
        self.loop = subprocess.run(
            ["losetup", "--find", "--show", str(self.backing)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.rdev = os.stat(self.loop).st_rdev
        self._before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in self.files()}

    def files(self) -> list[Path]:
        return [self.target, self.backing]

    def assert_unchanged(self) -> None:
        subprocess.run(["sync"], check=True)
        for p, (data, mtime) in self._before.items():
            assert p.read_bytes() == data, f"{p} changed"
            assert p.stat().st_mtime_ns == mtime, f"{p} was written to"

    def close(self) -> None:
        subprocess.run(["losetup", "-d", self.loop], check=False)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostFiles]:
    h = HostFiles(tmp_path)
    try:
        yield h
    finally:
        h.close()


# -- planting ------------------------------------------------------------------
def plant(root: Path, rel: str, kind: str, host: HostFiles) -> None:
    """Replace `rel` in the rootfs at `root` (on the host) with `kind`."""
    path = root / rel
    if os.path.lexists(path):
        assert not stat.S_ISDIR(os.lstat(path).st_mode), f"{path} is a directory"
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "host-symlink":
        path.symlink_to(host.target)
    elif kind == "device":
        os.mknod(path, stat.S_IFBLK | 0o666, host.rdev)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(HUGE)
    else:
        raise AssertionError(kind)


def plant_inside(d: Daemon, name: str, rel: str, kind: str, host: HostFiles) -> None:
    """The same from inside the running container, as its root would."""
    make = {
        "fifo": f"mkfifo /{rel}",
        "host-symlink": f"ln -s {host.target} /{rel}",
        "huge": f"truncate -s {HUGE} /{rel}",
    }[kind]
    sh(d, name, f"rm -f /{rel} && {make}")


def assert_kind(path: Path, kind: str, host: HostFiles) -> None:
    """`path` is still what plant() made (lxpy left it alone)."""
    st = os.lstat(path)
    if kind == "fifo":
        assert stat.S_ISFIFO(st.st_mode)
    elif kind == "host-symlink":
        assert os.readlink(path) == str(host.target)
    elif kind == "device":
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == host.rdev
    else:
        assert stat.S_ISREG(st.st_mode) and st.st_size == HUGE


def sh(d: Daemon, name: str, script: str) -> str:
    res = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", name, "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


# -- lxpyd keeps answering -------------------------------------------------------
@contextmanager
def answering(d: Daemon, other: str) -> Iterator[None]:
    """Throughout the block, lxpyd must answer GET /1.0, GET of container
    `other` and a config set of `other`, each within a second."""
    stop = threading.Event()
    failures: list[str] = []
    rounds = [0]

    def probe() -> None:
        client = Client(d.socket, timeout=1.0)
        while not stop.is_set():
            for what, call in (
                ("GET /1.0", client.server_info),
                (f"GET {other}", lambda: client.container(other)),
                (
                    f"config set {other}",
                    lambda: client.update_config(other, {"user.probe": str(rounds[0])}),
                ),
            ):
                try:
                    call()
                except LxpyError as e:
                    failures.append(f"{what}: {e.message}")
                    return
            rounds[0] += 1
            stop.wait(0.1)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
    assert not failures, failures
    assert rounds[0] > 0, "the probe never completed a round"


def busybox(d: Daemon, *names: str) -> None:
    d.cli("template", "build", "busybox", timeout=300)
    for name in names:
        d.cli("create", name, "-t", "busybox")


def rootfs(d: Daemon, name: str) -> Path:
    return Path(info(d, name)["path"])


def state(d: Daemon, name: str) -> str:
    return str(info(d, name)["state"])


# -- start, copy, info with each kind at each path --------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_paths_at_copy_start_and_info(daemon: Daemon, host: HostFiles, kind: str) -> None:
    d = daemon
    busybox(d, "web", "other")
    root = rootfs(d, "web")
    with answering(d, "other"):
        d.cli("start", "web", timeout=60)
        if kind == "device":
            d.cli("stop", "web", timeout=60)
            for rel in ("etc/hostname", "etc/hosts", "sbin/init"):
                plant(root, rel, kind, host)
        else:
            for rel in ("etc/hostname", "etc/hosts", "sbin/init"):
                plant_inside(d, "web", rel, kind, host)
            d.cli("stop", "web", timeout=60)

        # A copy writes the new container's hostname files.
        d.cli("copy", "web", "web2", timeout=60)
        copy = rootfs(d, "web2")
        assert (copy / "etc/hostname").read_text() == "web2\n"
        assert_kind(copy / "etc/hosts", kind, host)

        # The init is looked at, never opened, and named in the error.
        res = d.cli("start", "web", check=False, timeout=60)
        assert res.returncode != 0
        err = res.stderr
        if kind == "host-symlink":
            assert (
                f"container 'web': its init /sbin/init does not exist (a symlink to {host.target}"
                in err
            )
        elif kind == "huge":
            assert "container 'web': its init /sbin/init is not executable" in err, err
        else:
            what = "a FIFO" if kind == "fifo" else "a block device"
            assert f"container 'web': its init /sbin/init is {what}, not a program" in err, err
        assert state(d, "web") == "STOPPED"

        # With a working init it starts: /etc/hostname (lxpy's) replaced,
        # /etc/hosts (the container's) left as it is.
        (root / "sbin/init").unlink()
        (root / "sbin/init").symlink_to("/bin/busybox")
        d.cli("start", "web", timeout=60)
        assert state(d, "web") == "RUNNING"
        assert sh(d, "web", "cat /etc/hostname; hostname") == "web\nweb\n"
        assert_kind(root / "etc/hosts", kind, host)

        # Its disk use: what it holds, not 10 GiB of holes or a host file.
        used = info(d, "web")["stats"]["disk_bytes"]
        assert isinstance(used, int) and 0 < used < 64 << 20, used
    host.assert_unchanged()


def test_five_poisoned_containers_started_at_once(daemon: Daemon, host: HostFiles) -> None:
    d = daemon
    names = [f"p{i}" for i in range(5)]
    busybox(d, *names, "other")
    for name in names:
        root = rootfs(d, name)
        plant(root, "etc/hostname", "fifo", host)
        plant(root, "etc/hosts", "fifo", host)
    errors: list[str] = []

    def start(name: str) -> None:
        try:
            Client(d.socket, timeout=60).start_container(name)
        except LxpyError as e:
            errors.append(f"{name}: {e.message}")

    with answering(d, "other"):
        threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        # While they start: a create and a copy of other containers.
        d.cli("create", "fresh", "-t", "busybox", timeout=30)
        d.cli("copy", "other", "other2", timeout=30)
        for t in threads:
            t.join(timeout=90)
        assert not errors, errors
        for name in names:
            assert state(d, name) == "RUNNING"
            assert sh(d, name, "cat /etc/hostname") == f"{name}\n"
            assert stat.S_ISFIFO(os.lstat(rootfs(d, name) / "etc/hosts").st_mode)
    host.assert_unchanged()


def test_the_disk_walk_stays_in_the_rootfs(daemon: Daemon, tmp_path: Path, host: HostFiles) -> None:
    d = daemon
    busybox(d, "web", "other")
    root = rootfs(d, "web")
    # A host directory with 64 MiB in it: mounted inside the rootfs (as an
    # admin's bind or a leftover would be), and symlinked to.
    big = tmp_path / "big"
    big.mkdir()
    (big / "data").write_bytes(os.urandom(1 << 20) * 64)
    (root / "mnt/host").mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(big), str(root / "mnt/host")], check=True)
    try:
        for rel, kind in (
            ("root/fifo", "fifo"),
            ("root/link", "host-symlink"),
            ("root/sparse", "huge"),
            ("root/disk", "device"),
        ):
            plant(root, rel, kind, host)
        (root / "root/dir-link").symlink_to(big)
        with answering(d, "other"):
            d.cli("start", "web", timeout=60)
            used = info(d, "web")["stats"]["disk_bytes"]
        # The busybox system's few MiB, not the 64 MiB mounted or linked
        # to, nor 10 GiB of holes.
        assert isinstance(used, int) and 0 < used < 32 << 20, used
    finally:
        subprocess.run(["umount", str(root / "mnt/host")], check=False)
    host.assert_unchanged()


# -- a template's setup on a hostile tarball ---------------------------------------
def _tarball(work: Path, poison: Callable[[Path], None]) -> Path:
    """A busybox rootfs tarball with `poison` applied to its tree."""
    from lxpy.build import busybox as bb

    src = work / "src"
    src.mkdir()
    applets = bb.parse_applets(
        subprocess.run(["busybox", "--list-full"], capture_output=True, text=True).stdout
    )
    bb.lay_out(src, Path("/bin/busybox"), applets, "test")
    poison(src)
    archive = work / "rootfs.tar"
    subprocess.run(
        ["tar", "-C", str(src), "--numeric-owner", "--sparse", "-cf", str(archive), "."],
        check=True,
    )
    subprocess.run(["rm", "-rf", str(src)], check=True)
    return archive


async def _build(work: Path, archive: Path) -> Path:
    text = f'[source]\nkind = "tarball"\npath = "{archive}"\n'
    defn = parse_template("imported", text, work / "imported.toml")
    target = work / "target"
    target.mkdir()

    class Report:
        def log(self, line: str) -> None:
            pass

        def progress(self, fraction: float, stage: str) -> None:
            pass

    with trio.fail_after(120):
        await build_rootfs(defn, target, mirror="", cache_dir=None, report=Report())
    return target


@pytest.mark.trio
async def test_a_template_setup_replaces_what_it_owns(plain_dir: Path, host: HostFiles) -> None:
    def poison(src: Path) -> None:
        plant(src, "etc/hostname", "fifo", host)
        plant(src, "etc/hosts", "host-symlink", host)
        (src / "etc/machine-id").touch()
        plant(src, "etc/machine-id", "device", host)
        plant(src, "etc/resolv.conf", "fifo", host)
        plant(src, "etc/localtime", "host-symlink", host)
        plant(src, "etc/timezone", "huge", host)
        plant(src, "etc/init.d/S40network", "device", host)

    target = await _build(plain_dir, _tarball(plain_dir, poison))
    assert (target / "etc/hostname").read_text() == "imported\n"
    assert "127.0.1.1\timported" in (target / "etc/hosts").read_text()
    assert (target / "etc/timezone").read_text() == "Etc/UTC\n"
    for rel in ("etc/machine-id", "etc/localtime", "etc/init.d/S40network"):
        assert stat.S_ISREG(os.lstat(target / rel).st_mode), rel
    host.assert_unchanged()


@pytest.mark.trio
@pytest.mark.parametrize(
    ("rel", "kind", "message"),
    [
        ("etc/inittab", "fifo", "/etc/inittab is a FIFO, not a regular file"),
        ("etc/passwd", "device", "/etc/passwd is a block device, not a regular file"),
        ("etc/shadow", "huge", "/etc/shadow is larger than 1 MiB, the most lxpy reads from it"),
    ],
)
async def test_a_template_setup_refuses_what_it_must_read(
    plain_dir: Path, host: HostFiles, rel: str, kind: str, message: str
) -> None:
    archive = _tarball(plain_dir, lambda src: plant(src, rel, kind, host))
    with pytest.raises(LxpyError, match=f"^template 'imported': {message}"):
        await _build(plain_dir, archive)
    host.assert_unchanged()
