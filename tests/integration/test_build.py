"""Building template rootfs trees for real: busybox, tarball, the cache,
cancellation, and (slow) Debian bookworm."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from lxpy.build import proc
from lxpy.build.builder import build_rootfs
from lxpy.errors import InvalidArgument, LxpyError
from lxpy.model.settings import DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
from lxpy.model.template import TemplateDef, find_template, parse_template

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
MIRROR = os.environ.get("LXPY_TEST_MIRROR", DEFAULT_MIRROR)


@dataclass
class Recorder:
    lines: list[str] = field(default_factory=list)
    stages: list[tuple[float, str]] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def progress(self, fraction: float, stage: str) -> None:
        self.stages.append((fraction, stage))

    def stage_names(self) -> list[str]:
        return [s for _, s in self.stages]


def my_children() -> list[int]:
    """Live child processes of this test process (all its threads)."""
    kids = []
    for task in Path("/proc/self/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(p) for p in text]
    return kids


def processes_with(arg: str) -> list[int]:
    """Pids whose command line contains `arg`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if arg in cmdline:
            found.append(int(p.name))
    return found


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a /proc condition (processes have no event to wait on here)."""
    for _ in range(1000):
        if condition():
            return
        await trio.sleep(0.02)
    raise AssertionError("condition not reached in 20s")


async def build(defn: TemplateDef, target: Path, cache_dir: Path | None = None) -> Recorder:
    rec = Recorder()
    await build_rootfs(defn, target, mirror=MIRROR, cache_dir=cache_dir, report=rec)
    return rec


def busybox_defn() -> TemplateDef:
    return find_template([TEMPLATES], "busybox")


@pytest.mark.trio
async def test_busybox_build(plain_dir: Path) -> None:
    root = plain_dir / "rootfs"
    root.mkdir()
    with trio.fail_after(60):
        rec = await build(busybox_defn(), root)
    assert rec.stages[-1] == (1.0, "done")
    assert my_children() == []

    # Every applet is a link to the one binary.
    assert (root / "bin/busybox").is_file() and not (root / "bin/busybox").is_symlink()
    for applet in ("bin/sh", "sbin/init", "sbin/getty", "bin/login", "sbin/udhcpc", "sbin/ip"):
        assert os.readlink(root / applet) == "/bin/busybox", applet
    res = await trio.run_process(["/bin/busybox", "--list-full"], capture_stdout=True)
    listed = set(res.stdout.decode().split()) - {"bin/busybox", "linuxrc"}
    assert len(listed) > 100
    assert [a for a in listed if not (root / a).is_symlink()] == []
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    for d in ("proc", "sys", "dev", "run", "root", "var/log", "usr/sbin"):
        assert (root / d).is_dir(), d

    inittab = (root / "etc/inittab").read_text()
    assert "::sysinit:/etc/init.d/rcS" in inittab
    assert "::shutdown:/etc/init.d/rcK" in inittab
    assert "::respawn:/sbin/getty -L 0 console vt100" in inittab
    for script in (
        "etc/init.d/rcS",
        "etc/init.d/rcK",
        "etc/init.d/S40network",
        "usr/share/udhcpc/default.script",
    ):
        assert os.access(root / script, os.X_OK), script
    assert "udhcpc -i eth0 -b" in (root / "etc/init.d/S40network").read_text()
    assert (root / "etc/shadow").read_text().startswith("root:*:")
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o600
    assert "ID=busybox" in (root / "etc/os-release").read_text()
    assert (root / "etc/hostname").read_text() == "busybox\n"
    assert (root / "etc/machine-id").read_text() == ""

    # The result runs: its shell, and the shell's parse of every boot script.
    res = await trio.run_process(
        ["chroot", str(root), "/bin/sh", "-c", "echo ok"], capture_stdout=True
    )
    assert res.stdout == b"ok\n"
    for script in ("/etc/init.d/rcS", "/etc/init.d/rcK", "/usr/share/udhcpc/default.script"):
        await trio.run_process(["chroot", str(root), "/bin/sh", "-n", script])


# Boots the network part of the busybox rootfs against a real DHCP server.
# Run in fresh network, pid and mount namespaces (unshare --kill-child):
# every process started here, dnsmasq and the udhcpc left in the
# background, dies with it. $1 is the rootfs.
DHCP_SCRIPT = r"""
set -e
root=$1
ip link set lo up
ip link add eth0 type veth peer name peer0
ip addr add 10.99.0.1/24 dev peer0
ip link set peer0 up
unshare --net sh -c 'until ip link show eth0 >/dev/null 2>&1; do sleep 0.02; done
  ip link set lo up
  chroot "$0" /etc/init.d/S40network start
  chroot "$0" /bin/sh -c "ip -4 addr show eth0; ip route"' "$root" &
inner=$!
until [ "$(readlink /proc/$inner/ns/net)" != "$(readlink /proc/self/ns/net)" ]; do sleep 0.02; done
ip link set eth0 netns "$inner"
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --port=0 \
  --interface=peer0 --bind-interfaces --no-ping --user=root --pid-file= \
  --dhcp-leasefile=/dev/null --dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,1h \
  --dhcp-option=option:router,10.99.0.1 --dhcp-option=option:dns-server,10.99.0.1 \
  --dhcp-option=option:domain-name,lxpy &
wait "$inner"
"""


@pytest.mark.trio
async def test_busybox_dhcp_on_eth0(plain_dir: Path) -> None:
    """S40network runs udhcpc on eth0; the event script configures the
    address, the default route and resolv.conf from a dnsmasq lease."""
    root = plain_dir / "rootfs"
    root.mkdir()
    with trio.fail_after(60):
        await build(busybox_defn(), root)
        res = await trio.run_process(
            [
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                # A /proc of the new pid namespace: the script reads
                # /proc/$!, and $! is a pid in that namespace.
                "--mount-proc",
                "sh",
                "-c",
                DHCP_SCRIPT,
                "dhcp",
                str(root),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    assert "inet 10.99.0." in out
    assert "default via 10.99.0.1 dev eth0" in out
    assert (root / "etc/resolv.conf").read_text() == "search lxpy\nnameserver 10.99.0.1\n"
    assert processes_with(str(root)) == []


def tarball_defn(dir: Path, archive: Path, sha256: str = "", extra: str = "") -> TemplateDef:
    text = (
        'description = "imported busybox"\nhalt_signal = "SIGUSR2"\n'
        f'[source]\nkind = "tarball"\npath = "{archive.name}"\n'
        + (f'sha256 = "{sha256}"\n' if sha256 else "")
        + extra
    )
    f = dir / "imported.toml"
    f.write_text(text)
    return parse_template("imported", text, f)


async def make_busybox_tarball(work: Path) -> tuple[Path, str]:
    src = work / "src"
    src.mkdir()
    await build(busybox_defn(), src)
    archive = work / "rootfs.tar.gz"
    await trio.run_process(["tar", "-C", str(src), "--numeric-owner", "-czf", str(archive), "."])
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.mark.trio
async def test_tarball_build_and_cache(plain_dir: Path) -> None:
    cache_dir = plain_dir / "cache"
    with trio.fail_after(120):
        archive, digest = await make_busybox_tarball(plain_dir)
        defn = tarball_defn(plain_dir, archive, digest)

        first = plain_dir / "first"
        first.mkdir()
        rec = await build(defn, first, cache_dir)
        assert "extracting" in rec.stage_names()
        assert "from cache" not in rec.stage_names()
        assert os.readlink(first / "bin/sh") == "/bin/busybox"
        # Setup ran on the imported tree: it is a busybox system.
        assert "init /sbin/init: busybox" in rec.lines
        assert (first / "etc/hostname").read_text() == "imported\n"
        cached = cache_dir / f"imported-{defn.digest()}.tar"
        assert cached.is_file()
        assert [p.name for p in cache_dir.iterdir()] == [cached.name]

        # Unchanged definition: restored from the cache, same tree.
        second = plain_dir / "second"
        second.mkdir()
        rec = await build(defn, second, cache_dir)
        assert "from cache" in rec.stage_names()
        assert "setup" not in rec.stage_names()
        assert (second / "etc/hostname").read_text() == "imported\n"
        assert sorted(p.name for p in second.iterdir()) == sorted(p.name for p in first.iterdir())
        assert stat.S_IMODE((second / "tmp").stat().st_mode) == 0o1777

        # A real change: new digest, fresh build, the old tarball goes.
        changed = tarball_defn(plain_dir, archive, digest, '[setup]\nnetwork = "none"\n')
        assert changed.digest() != defn.digest()
        third = plain_dir / "third"
        third.mkdir()
        rec = await build(changed, third, cache_dir)
        assert "from cache" not in rec.stage_names()
        assert not (third / "etc/init.d/S40network").exists()
        assert [p.name for p in cache_dir.iterdir()] == [f"imported-{changed.digest()}.tar"]
    assert my_children() == []


@pytest.mark.trio
async def test_tarball_sha256_mismatch(plain_dir: Path) -> None:
    archive = plain_dir / "rootfs.tar"
    await trio.run_process(
        ["tar", "-C", str(plain_dir), "-cf", str(archive), "--files-from=/dev/null"]
    )
    defn = tarball_defn(plain_dir, archive, "0" * 64)
    target = plain_dir / "t"
    target.mkdir()
    with trio.fail_after(30), pytest.raises(LxpyError) as e:
        await build(defn, target)
    assert "source.sha256 mismatch" in e.value.message
    assert "0" * 64 in e.value.message
    assert "update source.sha256" in (e.value.hint or "")


@pytest.mark.trio
async def test_target_must_be_empty(plain_dir: Path) -> None:
    (plain_dir / "junk").write_text("")
    with trio.fail_after(10), pytest.raises(InvalidArgument, match="not empty"):
        await build(busybox_defn(), plain_dir)


@pytest.mark.trio
async def test_cancel_kills_the_extracting_tar(plain_dir: Path) -> None:
    """A cancelled build leaves no process behind: tar blocks on a FIFO that
    nobody writes until the build is cancelled."""
    fifo = plain_dir / "never-written.tar"
    os.mkfifo(fifo)
    defn = tarball_defn(plain_dir, fifo)
    target = plain_dir / "t"
    target.mkdir()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(build, defn, target)
            await wait_until(lambda: bool(processes_with(str(fifo))))
            nursery.cancel_scope.cancel()
    assert processes_with(str(fifo)) == []
    assert my_children() == []


@pytest.mark.trio
async def test_cancel_kills_the_whole_process_group() -> None:
    """Grandchildren a tool forked die with it (the session is killed)."""
    marker = "987.6543"
    lines: list[str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                proc.run_logged,
                ["sh", "-c", f"echo started; sleep {marker} & sleep {marker}; wait"],
                lines.append,
            )
            # the shell and its two sleeps
            await wait_until(lambda: len(processes_with(f"sleep {marker}")) == 3)
            nursery.cancel_scope.cancel()
    assert lines == ["started"]
    assert processes_with(f"sleep {marker}") == []


@pytest.mark.trio
async def test_failed_tool_reports_its_output() -> None:
    with trio.fail_after(30), pytest.raises(LxpyError) as e:
        await proc.run_logged(["sh", "-c", "echo one; echo two >&2; exit 3"], lambda _: None)
    assert "exited with status 3" in e.value.message
    assert "one\ntwo" in e.value.message


@pytest.mark.slow
@pytest.mark.trio
async def test_debian_bookworm(plain_dir: Path, test_cache: Path) -> None:
    """The real Debian template. Bootstrapped once per machine (a few
    minutes, from the Debian mirror); later runs restore the cached tarball."""
    defn = find_template([TEMPLATES], "debian-bookworm")
    root = plain_dir / "rootfs"
    root.mkdir()
    with trio.fail_after(1800):
        rec = await build(defn, root, test_cache)
    assert (test_cache / f"debian-bookworm-{defn.digest()}.tar").is_file()
    assert my_children() == []
    assert proc.mounts_under(root) == []

    assert os.readlink(root / "sbin/init") in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
    network = (root / "etc/systemd/network/80-lxpy-eth0.network").read_text()
    assert "Name=eth0" in network and "DHCP=ipv4" in network
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "systemd-networkd.service").is_symlink()
    assert (root / "etc/systemd/system/sockets.target.wants/systemd-networkd.socket").is_symlink()
    assert os.readlink(root / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert not (root / "etc/systemd/system/console-getty.service").exists()

    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    lists = [p.name for p in (root / "var/lib/apt/lists").iterdir()]
    assert set(lists) <= {"lock", "partial"}
    assert (root / "etc/machine-id").read_text() == ""
    shadow = (root / "etc/shadow").read_text().splitlines()
    assert [line.split(":")[1] for line in shadow if line.startswith("root:")] == ["*"]
    assert (root / "etc/hostname").read_text() == "debian-bookworm\n"

    res = await trio.run_process(
        [
            "chroot",
            str(root),
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${Status}\\n",
            *defn.source.packages,
        ],
        capture_stdout=True,
    )
    assert res.stdout.decode().count("install ok installed") == len(defn.source.packages)
    # dbus keeps its machine id as a link to the (empty) systemd one.
    dbus_id = root / "var/lib/dbus/machine-id"
    assert not dbus_id.exists() or os.readlink(dbus_id) == "/etc/machine-id"
    print(f"debian-bookworm: {rec.lines[-1] if rec.lines else ''}")


@pytest.mark.slow
@pytest.mark.trio
async def test_debootstrap_upgrades_to_the_extra_suites(plain_dir: Path, test_cache: Path) -> None:
    """debootstrap takes one suite and one mirror: the updates and security
    suites come in by an apt-get dist-upgrade in the rootfs once its sources
    are written. Bootstrapped once per machine (a few minutes); later runs
    restore the cached tarball, which keeps apt's record of the upgrade."""
    text = (TEMPLATES / "debian-bookworm.toml").read_text()
    assert 'tool = "auto"' in text
    defn = parse_template(
        "bookworm-by-debootstrap", text.replace('tool = "auto"', 'tool = "debootstrap"')
    )
    root = plain_dir / "rootfs"
    root.mkdir()
    with trio.fail_after(1800):
        await build(defn, root, test_cache)
    assert my_children() == []
    assert proc.mounts_under(root) == []
    sources = (root / "etc/apt/sources.list").read_text().splitlines()
    assert sources[1:] == [
        f"deb {MIRROR} bookworm main",
        f"deb {MIRROR} bookworm-updates main",
        f"deb {DEFAULT_SECURITY_MIRROR} bookworm-security main",
    ]
    # apt's own record: the upgrade ran in the rootfs, and every package
    # it upgraded is installed at the new version. (bookworm-security has
    # fixes newer than bookworm's last point release for as long as it is
    # supported, so the upgrade always has something to do.)
    history = (root / "var/log/apt/history.log").read_text()
    assert "Commandline: apt-get -q -y" in history and "dist-upgrade" in history
    upgraded = re.findall(
        r"([a-z0-9.+-]+):\w+ \(([^,]+), ([^)]+)\)", history.split("Upgrade: ")[1].splitlines()[0]
    )
    assert upgraded
    status = (root / "var/lib/dpkg/status").read_text()
    for package, _old, new in upgraded:
        assert f"Package: {package}\n" in status
        assert re.search(
            rf"Package: {re.escape(package)}\n(?:[^\n]+\n)*?Version: {re.escape(new)}\n", status
        ), package
    # The downloaded packages and lists are gone, as for mmdebstrap.
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    lists = root / "var/lib/apt/lists"
    assert [p.name for p in lists.rglob("*") if not p.is_dir()] == ["lock"]


@pytest.mark.trio
async def test_background_child_holding_the_pipe_is_killed() -> None:
    """A tool that exits leaving a child on its stdout does not hang the
    build, and the child does not outlive it."""
    marker = "986.5432"
    lines: list[str] = []
    with trio.fail_after(30):
        await proc.run_logged(["sh", "-c", f"sleep {marker} & echo done"], lines.append)
    assert lines == ["done"]
    assert processes_with(f"sleep {marker}") == []
