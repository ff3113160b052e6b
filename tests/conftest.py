"""Shared fixtures: capability probes, loop-file btrfs pools, real daemons.

Everything a fixture makes is removed in its finaliser, also when the test
fails. Integration tests need root, btrfs and loop devices; when those are
missing they are skipped with the reason, and .ci/run fails on such skips.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lxpy.daemon.peers import Groups
    from lxpy.kernel.cgroups import ContainerCgroup
    from lxpy.model.paths import RootPaths

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _probe_integration() -> str | None:
    """Why integration tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "integration tests need root"
    for tool in ("mkfs.btrfs", "losetup", "mount"):
        if shutil.which(tool) is None:
            return f"integration tests need {tool} (run scripts/setup)"
    if "btrfs" not in Path("/proc/filesystems").read_text():
        return "the kernel has no btrfs"
    return None


INTEGRATION_SKIP = _probe_integration()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if INTEGRATION_SKIP is None:
        return
    marker = pytest.mark.skip(reason=INTEGRATION_SKIP)
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(marker)


def own_groups() -> Groups:
    """Access groups (lxpy.daemon.peers.Groups) under which the user that runs
    the tests is an admin, for an in-test server: root is one anyway, any
    other user through their primary group."""
    import grp

    from lxpy.daemon import peers

    return peers.Groups(admin=grp.getgrgid(os.getgid()).gr_name, user="")


@contextlib.contextmanager
def named_cgroup_hierarchy(mnt: Path) -> Iterator[tuple[Path, str]]:
    """A cgroup v1 hierarchy without controllers mounted on `mnt` while the
    block runs, as an admin or a tool might mount one: (`mnt`, its name).
    The name is new each time: mounting one that the kernel still holds
    would take up that one, without a new hierarchy ID."""
    mnt.mkdir()
    name = f"lxpytest{os.getpid()}-{secrets.token_hex(3)}"
    mount = ["mount", "-t", "cgroup", "-o", f"none,name={name}", "cgroup", str(mnt)]
    subprocess.run(mount, check=True)
    try:
        yield mnt, name
    finally:
        unmount_named_cgroup_hierarchy(mnt, name)


def unmount_named_cgroup_hierarchy(mnt: Path, name: str) -> None:
    """Unmount the hierarchy `name=NAME` on `mnt`, if it still is there,
    and make the kernel drop it.

    A hierarchy unmounted with cgroups left lives on, unseen, in the
    kernel, in every process's /proc/PID/cgroup; so does one whose last
    cgroup, removed a moment ago, was still dying at the unmount: mounted
    again and unmounted, it goes. Any lxpyd on the host that started a
    container meanwhile (a real one, another test run) made its cgroups
    there too: those processes go back to the root, where every process
    is in a hierarchy without controllers, and the directories go with
    ours, or the hierarchy would outlive the test.
    """
    if not os.path.ismount(mnt):
        return
    try:
        dirs = [p for p in mnt.rglob("*") if p.is_dir()]
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    (mnt / "cgroup.procs").write_text(pid)
            d.rmdir()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    mount = ["mount", "-t", "cgroup", "-o", f"none,name={name}", "cgroup", str(mnt)]
    # A busy host can take a minute to free a dying cgroup; the names are
    # never used twice, so one that lingers empty meanwhile is in nobody's
    # way.
    deadline = time.monotonic() + 10
    while f"name={name}:" in Path("/proc/self/cgroup").read_text():
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
        subprocess.run(mount, check=True)
        subprocess.run(["umount", str(mnt)], check=True)


def make_btrfs(image: Path, mountpoint: Path, size: str = "3G") -> None:
    """A sparse loop-file btrfs filesystem mounted at `mountpoint`."""
    image.parent.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)


def unmount_all_under(path: Path) -> None:
    """Lazily unmount every mount at or below `path`, deepest first."""
    target = str(path.resolve())
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1] == target or line.split()[1].startswith(target + "/")
    ]
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)


@pytest.fixture
def btrfs_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a fresh loop-file btrfs filesystem of its own."""
    mnt = tmp_path / "btrfs"
    make_btrfs(tmp_path / "btrfs.img", mnt)
    try:
        yield mnt
    finally:
        unmount_all_under(tmp_path)


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    """A directory that is not on btrfs (the dir backend's home)."""
    d = tmp_path / "plain"
    d.mkdir()
    return d


@dataclass
class Daemon:
    """A real lxpyd process on its own root and socket."""

    root: Path
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def paths(self) -> RootPaths:
        """Where this daemon keeps its records, pool and run dir."""
        from lxpy.model.paths import RootPaths

        return RootPaths(self.root)

    def cgroup(self, name: str) -> ContainerCgroup:
        """Where this daemon keeps container `name`'s cgroups."""
        from lxpy.kernel.cgroups import ContainerCgroup
        from lxpy.model.settings import Settings

        return ContainerCgroup.for_name(name, parent=Settings(root=self.root).cgroup_parent)

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `lxpy` command against this daemon."""
        res = subprocess.run(
            [str(VENV_BIN / "lxpy"), "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"lxpy {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res


def start_daemon(
    root: Path,
    socket: Path,
    log: Path,
    *extra: str,
    settings: str | None = None,
    prefix: tuple[str, ...] = (),
) -> Daemon:
    """Start lxpyd (behind the command `prefix`, which must exec it) and
    wait until its socket answers."""
    args = [*prefix, str(VENV_BIN / "lxpyd"), "--root", str(root), "--socket", str(socket), *extra]
    if settings is None and "--config" not in extra:
        settings = ""
    if settings is not None:
        if "lxcfs" not in settings:
            # No lxcfs unless a test asks: lxpyd would start the system's
            # one, which outlives the suite (test_limits_live.py runs its own).
            settings += 'lxcfs = "off"\n'
        if "default_network" not in settings:
            # No default network unless a test names one: lxpybr0 is the
            # host's (a real lxpyd's), and parallel daemons must not share it.
            settings += 'default_network = ""\n'
        conf = root.parent / f"{root.name}-lxpyd.toml"
        conf.write_text(settings)
        args += ["--config", str(conf)]
    logf = log.open("ab")
    proc = subprocess.Popen(args, stdout=logf, stderr=logf, start_new_session=True)
    logf.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lxpyd exited {proc.returncode}:\n{log.read_text()}")
        if socket.exists():
            return Daemon(root, socket, proc, log)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"lxpyd did not open {socket} in time:\n{log.read_text()}")


def wait_for(cond: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """cond()'s first true value, polled until `timeout` seconds.

    Raises:
        AssertionError: naming `what`, when the time is up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # ProcessLookupError: it ended between the open and the read.
        return False


def owns(userns_fd: int, ns_fd: int) -> bool:
    """Whether the user namespace open at `userns_fd` owns namespace `ns_fd`."""
    from lxpy.kernel import namespaces

    owner = namespaces.owning_userns(ns_fd)
    try:
        return os.fstat(owner).st_ino == os.fstat(userns_fd).st_ino
    finally:
        os.close(owner)


def assert_loopback_only(d: Daemon, name: str, pid: int) -> None:
    """Container `name` (init `pid`), on no network, has a network namespace
    of its own holding only loopback, up; none is bound in the daemon's run
    dir (nothing outside needs to reach it)."""
    from lxpy.model.paths import RunPaths

    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    res = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    links = [line.split(":")[1].strip() for line in res.stdout.splitlines()]
    assert links == ["lo"], res.stdout
    assert "<LOOPBACK,UP" in res.stdout
    assert not RunPaths.of(d.root).netns(name).exists()


def info(d: Daemon, name: str) -> dict[str, Any]:
    """`lxpy info NAME --format json`, parsed."""
    import json

    return json.loads(d.cli("info", name, "--format", "json").stdout)


def push(d: Daemon, name: str, src: str | Path, dest: str, mode: str = "644") -> None:
    """Copy a host file into container `name` (at `dest`, its directory
    made) through the real `lxpy exec`."""
    with open(src, "rb") as f:
        res = subprocess.run(
            [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", name, "--"]
            + ["sh", "-c", f"mkdir -p $(dirname {dest}) && cat > {dest} && chmod {mode} {dest}"],
            stdin=f,
            capture_output=True,
            timeout=300,
        )
    assert res.returncode == 0, res.stderr


def stop_daemon(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.proc.terminate()
        try:
            d.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()


KSM_RUN = Path("/sys/kernel/mm/ksm/run")


def ksm_state() -> str | None:
    """What /sys/kernel/mm/ksm/run holds now (None without KSM)."""
    try:
        return KSM_RUN.read_text().strip()
    except OSError:
        return None


def restore_ksm(state: str | None) -> None:
    """Put /sys/kernel/mm/ksm/run back to `state` (from ksm_state()).

    Why: lxpyd runs ksmd after starts (its `ksm` setting), a host-wide
    switch, and an lxpyd killed in the middle of a burst leaves it on, and
    its mark that lxpy started it. Pages merged by then stay merged until
    written, as after any stop of ksmd.
    """
    from lxpy.model.paths import KSMD_MARKER

    if state is not None and ksm_state() != state:
        KSM_RUN.write_text(state)
    if state != "1":
        KSMD_MARKER.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _ksmd_as_it_was() -> Iterator[None]:
    state = ksm_state()
    yield
    restore_ksm(state)


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """The suite's build cache: built rootfs tarballs kept between runs, so
    the Debian template is bootstrapped once per machine, not per test."""
    d = Path(os.environ.get("LXPY_TEST_CACHE", "/var/cache/lxpy-tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lxpy_<version>_<arch>.deb, built from this checkout once per run
    (lintian errors fail it)."""
    from lxpy import __version__

    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), "--install-deps", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"build-deb failed:\n{res.stderr[-5000:]}"
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    built = out / f"lxpy_{__version__}_{arch}.deb"
    assert built.is_file(), f"expected {built.name}, got {sorted(p.name for p in out.iterdir())}"
    return built


@contextlib.contextmanager
def daemon_in(
    tmp_path: Path,
    settings: str,
    after_stop: Callable[[], object] | None = None,
    prefix: tuple[str, ...] = (),
) -> Iterator[Daemon]:
    """A real lxpyd on tmp_path/root (its loop-file btrfs pool is made by
    lxpyd itself on first start) with `settings`, started behind `prefix`
    (see start_daemon); at the end it, its containers, `after_stop` and
    every mount under tmp_path go."""
    root = tmp_path / "root"
    root.mkdir()
    d = start_daemon(
        root, tmp_path / "lxpy.sock", tmp_path / "lxpyd.log", settings=settings, prefix=prefix
    )
    try:
        yield d
    finally:
        stop_daemon(d)
        stop_containers(root)
        forget_host_ids(root)
        if after_stop is not None:
            after_stop()
        unmount_all_under(tmp_path)


@contextlib.contextmanager
def dir_daemon_in(tmp_path: Path, test_cache: Path, tag: str = "plain") -> Iterator[Daemon]:
    """A real lxpyd on a plain-directory pool (storage = "dir", as on a
    host without btrfs) in tmp_path/`tag`, with the suite's build cache;
    removed as daemon_in removes its daemon."""
    where = tmp_path / tag
    where.mkdir(parents=True)
    with daemon_in(where, f'storage = "dir"\nbuild_cache = "{test_cache}"\n') as d:
        yield d


@pytest.fixture
def dir_daemon(tmp_path: Path, test_cache: Path) -> Iterator[Daemon]:
    """A real lxpyd on a dir pool of its own (see dir_daemon_in)."""
    with dir_daemon_in(tmp_path, test_cache) as d:
        yield d


def forget_host_ids(root: Path) -> None:
    """Drop the entry of the daemon at `root` from the host-wide record of
    ID blocks (lxpy.daemon.hostids), which every lxpyd on the host shares
    and which would otherwise hold the test's blocks until `root` is gone."""
    from lxpy.daemon.hostids import HostIds

    HostIds(root.absolute()).forget()


def start_again(d: Daemon, log: Path) -> Daemon:
    """lxpyd again on `d`'s root, socket and settings file (`d` has ended)."""
    conf = d.root.parent / f"{d.root.name}-lxpyd.toml"
    return start_daemon(d.root, d.socket, log, "--config", str(conf))


@pytest.fixture
def daemon(tmp_path: Path, test_cache: Path) -> Iterator[Daemon]:
    """A real lxpyd on a root of its own, with the suite's build cache."""
    # No default network: parallel test daemons must not share lxpybr0;
    # a test that wants networking makes a network of its own.
    with daemon_in(
        tmp_path, f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
    ) as d:
        yield d


def stop_containers(root: Path) -> list[str]:
    """Kill the monitors (so the containers), the zygote and the networks'
    dnsmasq that lxpyd left running for `root` (they outlive lxpyd by
    design), with their network namespaces and cgroups. Returns what was
    found still running."""
    import json
    import signal

    from lxpy.errors import LxpyError
    from lxpy.kernel.cgroups import PREFIX, ContainerCgroup, hierarchies, remove_parent
    from lxpy.kernel.namespaces import unpin_ns
    from lxpy.model.paths import RunPaths
    from lxpy.model.settings import Settings
    from lxpy.network import links
    from lxpy.runtime.control import MonitorClient

    run = RunPaths.of(root.absolute())
    parent = Settings(root=root.absolute()).cgroup_parent
    left = []
    for sock in run.containers.glob("*/monitor.sock"):
        name = sock.parent.name
        try:
            MonitorClient(str(sock), timeout=20).request("kill", wait=20)
            left.append(f"container {name}")
        except LxpyError:
            pass
    # Every container cgroup under the daemon's parent, with or without a
    # monitor, then the parent.
    names = {d.name for h in hierarchies() for d in Path(h.mountpoint, parent).glob(PREFIX + "*")}
    for cgname in names:
        cg = ContainerCgroup.for_name(cgname.removeprefix(PREFIX), parent=parent)
        try:
            cg.kill(timeout=5)
            cg.remove(timeout=5)
        except LxpyError:
            pass
    remove_parent(parent)
    try:
        pid = int(run.zygote_pid.read_text())
        if Path(f"/proc/{pid}/comm").read_text().strip() == "lxpy-zygote":
            os.kill(pid, signal.SIGKILL)
            left.append(f"zygote {pid}")
    except (OSError, ValueError):
        pass
    for pid_file in run.networks.glob("*/dnsmasq.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            if f"--pid-file={pid_file}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
                left.append(f"dnsmasq {pid}")
    for nics in run.nics_dir.glob("*.json"):
        try:
            links.delete_links(n["host"] for n in json.loads(nics.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for ns in run.netns_dir.glob("*"):
        links.remove_netns(ns)
    for ns in run.userns_dir.glob("*"):
        unpin_ns(str(ns))
    for d in (run.containers, run.nics_dir, run.netns_dir, run.userns_dir):
        shutil.rmtree(d, ignore_errors=True)
    for f in (run.zygote_socket, run.zygote_pages, run.zygote_pid):
        f.unlink(missing_ok=True)
    try:
        run.dir.rmdir()  # only when nothing else (networks) is left in it
    except OSError:
        pass
    return left


# -- a run that must exercise the integration tests fails when one did not run --
# What was collected is counted against what ran, so that every way a test
# can drop out counts: a skip in the test or its fixtures, a module skipped
# as it was imported (`pytest.skip(allow_module_level=True)`, importorskip),
# and a deselection (`-m`, `-k`, `--deselect` passed to scripts/test).
_integration_collected: set[str] = set()
_integration_ran: set[str] = set()
_dropped: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _dropped.append(f"{report.nodeid} (skipped as it was collected)")


def pytest_deselected(items: list[pytest.Item]) -> None:
    _dropped.extend(f"{i.nodeid} (deselected)" for i in items if "integration" in i.keywords)


def pytest_collection_finish(session: pytest.Session) -> None:
    _integration_collected.update(i.nodeid for i in session.items if "integration" in i.keywords)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and not report.skipped:
        _integration_ran.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LXPY_REQUIRE_INTEGRATION") != "1" or session.config.option.collectonly:
        return
    missing = _dropped + sorted(
        f"{n} (did not run)" for n in _integration_collected - _integration_ran
    )
    if not missing:
        return
    print(
        f"\nerror: {len(missing)} integration test(s) or module(s) did not run "
        f"(first: {missing[0]}); this run requires them all"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _time_bound(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that runs past its module's TIME_BOUND seconds (600 when
    unset), so a hung kernel call or daemon fails that test, not the run."""
    import signal

    seconds = int(getattr(request.module, "TIME_BOUND", 600))

    def expired(*_: object) -> None:
        raise TimeoutError(f"test took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
