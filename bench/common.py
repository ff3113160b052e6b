"""Shared pieces of the running-container benchmarks (boot, memory, parallel).

A scratch area with its own loop-file btrfs pool, rootfs trees built by
lxpy's own builder (so LXC, systemd-nspawn and lxpy boot the same files),
a scratch LXC path, systemd-nspawn machines, a scratch lxpyd, the uniform
"until running" probe, and the result tables. Everything made here is
removed by `Scratch.close()`, also on failure or Ctrl-C.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# lxpy as installed: byte-code up to date, as scripts/setup and the
# package's postinst leave it. A checkout edited since, run with
# PYTHONDONTWRITEBYTECODE, would compile lxpy's modules again in every
# `lxpy` command and lxpyd (~6 ms of lxpy.cli alone) and weigh on its figures.
compileall.compile_dir(REPO / "lxpy", quiet=1)
compileall.compile_dir(REPO / "tui", quiet=1)

import btrfsutil  # noqa: E402
import trio  # noqa: E402

from lxpy.api.client import Client  # noqa: E402
from lxpy.build.builder import build_rootfs  # noqa: E402
from lxpy.errors import Unsupported  # noqa: E402
from lxpy.kernel import lxcfs as lxcfs_mod  # noqa: E402
from lxpy.kernel import syscalls as sc  # noqa: E402
from lxpy.model.paths import RootPaths  # noqa: E402
from lxpy.model.settings import builtin_template_dir  # noqa: E402
from lxpy.model.template import find_template  # noqa: E402
from tests.conftest import (  # noqa: E402
    Daemon,
    forget_host_ids,
    ksm_state,
    make_btrfs,
    restore_ksm,
    start_daemon,
    stop_daemon,
    unmount_all_under,
)

BIN = Path(sys.executable).parent
LXPY = str(BIN / "lxpy")
TEST_CACHE = Path(os.environ.get("LXPY_TEST_CACHE", "/var/cache/lxpy-tests"))
# How "running" is probed for all three tools: the same command, entered
# from the host into the container's namespaces, so no tool's own attach
# path (lxc-attach, machinectl, lxpy exec) weighs on its numbers.
WAIT_METHOD = "nsenter -t INIT -a systemctl is-system-running --wait (retried while offline)"
FINAL_STATES = ("running", "degraded", "maintenance", "stopping")


# -- numbers and tables -----------------------------------------------------


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def busy_ms() -> float:
    """CPU time the whole machine has spent busy since boot, all cores
    (user, nice, system, irq and softirq in /proc/stat; not idle, iowait or
    steal). The difference over a window is what everything running then
    cost, the measured tool and any other load alike."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) * _TICK_MS


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


def print_table(
    title: str, rows: Iterable[tuple[str, list[float]]], unit: str = "ms", digits: int = 1
) -> None:
    """One result table: label, runs, median, p90, min (rows without values say so)."""
    rows = list(rows)
    w = max([46, *(len(label) + 2 for label, _ in rows)])
    print(f"\n{title}")
    print(f"{'tool':<{w}}{'runs':>5}{'median ' + unit:>12}{'p90':>9}{'min':>9}")
    for label, xs in rows:
        if not xs:
            print(f"{label:<{w}}{0:>5}{'-':>12}{'-':>9}{'-':>9}")
            continue
        med, hi, lo = statistics.median(xs), p90(xs), min(xs)
        print(f"{label:<{w}}{len(xs):>5}{med:>12.{digits}f}{hi:>9.{digits}f}{lo:>9.{digits}f}")


def verdict(text: str, ok: bool | None) -> None:
    """Print a target line; None means it could not be measured."""
    mark = "not measured" if ok is None else ("met" if ok else "NOT met")
    print(f"target: {text}: {mark}")


# bench/run-all names a file here; each bench appends its rows to it (one
# JSON object a line) and run-all prints them all as one table.
SUMMARY_ENV = "LXPY_BENCH_SUMMARY"


def summary(
    bench: str,
    figure: str,
    lxpy: float | None,
    anchor: float | None,
    anchor_label: str,
    unit: str = "ms",
) -> None:
    """One row of bench/run-all's table: lxpy's median `figure` beside the
    anchor's (the like-for-like comparator: LXC or systemd-nspawn, doing the
    same work from the same state; "" when there is none). Lower is better
    for every figure. Nothing happens unless run-all asked for the rows."""
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    row = {
        "bench": bench,
        "figure": figure,
        "unit": unit,
        "lxpy": lxpy,
        "anchor": anchor,
        "anchor_label": anchor_label,
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def median_or_none(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


# -- processes --------------------------------------------------------------


def run(
    argv: list[str], timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
    return res


# The tools the benches compare lxpy with, and their Debian packages.
COMPARED = {"lxc-start": "lxc", "systemd-nspawn": "systemd-container"}


def install_compared(*commands: str) -> None:
    """Install the Debian packages of the compared `commands` (keys of
    COMPARED) that are missing, as scripts/setup installs lxpy's own."""
    missing = sorted({COMPARED[c] for c in commands if shutil.which(c) is None})
    if not missing:
        return
    print(f"installing {', '.join(missing)} to compare with", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all threads' lists)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces and parentheses: split after the last ')'.
        return int(f.read().rpartition(")")[2].split()[1])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pss_kb(pid: int) -> int:
    """Proportional set size of `pid` in KiB (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def kill_leftovers(mark: str) -> None:
    """Last resort after the orderly cleanups: SIGKILL every process whose
    command line names `mark` (the scratch directory: LXC monitors, lxpy's
    zygote and monitors, nspawn) and all their descendants, so no container
    outlives a crashed benchmark."""
    me = os.getpid()
    found = [p for p in all_pids() if p != me and mark in cmdline(p)]
    todo, doomed = list(found), set(found)
    while todo:
        for c in children(todo.pop()):
            if c not in doomed:
                doomed.add(c)
                todo.append(c)
    for p in doomed:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in doomed:
        try:
            wait_gone(p, 5)
        except TimeoutError:
            print(f"cleanup: process {p} did not end", file=sys.stderr)


def reap_orphans() -> None:
    """Collect every exited child (orphans adopted as a subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie); reaps it when it is our child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still there after {timeout} s")
        time.sleep(0.002)


# -- inside a booting systemd -----------------------------------------------


def wait_running(init_pid: int, timeout: float = 60) -> str:
    """Block until systemd in the container of `init_pid` finished booting.

    Returns its final state (`running` unless a unit failed). While systemd
    has not yet opened its private socket, systemctl answers `offline` at
    once instead of waiting, so it is asked again.
    """
    deadline = time.monotonic() + timeout
    argv = ["nsenter", "-t", str(init_pid), "-a", "systemctl", "is-system-running", "--wait"]
    last = ""
    while time.monotonic() < deadline:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        last = res.stdout.strip() or res.stderr.strip()
        if last in FINAL_STATES:
            return last
        time.sleep(0.003)
    raise TimeoutError(f"container of pid {init_pid} not running after {timeout} s: {last}")


_SPAN = re.compile(r"(\d+(?:\.\d+)?)(min|ms|us|h|s)\b")
_UNIT_MS = {"h": 3_600_000.0, "min": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001}


def parse_timespan_ms(text: str) -> float:
    """systemd's "1min 2.5s" / "456ms" / "1.203s" in milliseconds."""
    return sum(float(n) * _UNIT_MS[u] for n, u in _SPAN.findall(text))


def userspace_ms(init_pid: int) -> float | None:
    """systemd's own userspace boot time (`systemd-analyze`), or None."""
    res = run(["nsenter", "-t", str(init_pid), "-a", "systemd-analyze"], check=False)
    m = re.search(r"(?:\+ |in )([^+()]+?) \(userspace\)", res.stdout)
    return parse_timespan_ms(m.group(1)) if m else None


# -- the scratch area -------------------------------------------------------


class Scratch:
    """A temporary directory with a loop-file btrfs pool at `pool`.

    Cleanups registered with `defer` run last-in first-out in `close()`,
    then every mount under the directory goes and the directory is removed.
    """

    def __init__(self, prefix: str, size: str = "8G") -> None:
        # Processes that leave their session (lxpy's zygote and monitors,
        # LXC's monitor) are re-parented to us instead of PID 1, so the
        # ones a crash leaves behind can be found and reaped here.
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        # Strings naming what this scratch area started (its directory, and
        # lxpyd run dirs), for the last-resort sweep in close().
        self.marks = [str(self.dir)]
        self._stack = ExitStack()
        self.pool = self.dir / "pool"
        make_btrfs(self.dir / "pool.img", self.pool, size)
        self._lxcfs: str | None | bool = False  # False: not tried yet
        self.daemons = 0  # lxpyd roots made so far (each gets its own)

    def lxcfs(self) -> str | None:
        """An lxcfs mounted in the scratch directory, started on first use
        and shared by every tool of this run (lxpyd finds it at its
        `lxcfs_mount`, LXC binds its files); None when lxcfs or FUSE is
        missing. Started with lxpy's options (lxpy.kernel.lxcfs)."""
        if self._lxcfs is False:
            mount = str(self.dir / "lxcfs")
            try:
                self._lxcfs = lxcfs_mod.start(mount)
                self.defer(lxcfs_mod.stop, mount)
            except Unsupported as e:
                print(f"no lxcfs for either tool: {e.message}", file=sys.stderr)
                self._lxcfs = None
        return self._lxcfs if isinstance(self._lxcfs, str) else None

    def defer(self, fn: Callable[..., object], *args: object) -> None:
        self._stack.callback(fn, *args)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            for mark in self.marks:
                kill_leftovers(mark)
            reap_orphans()
            unmount_all_under(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            # The daemons' logs go with the directory: their last lines say
            # what lxpyd saw of the failure.
            for log in sorted(self.dir.glob("lxpy-root*.log")):
                tail = log.read_text(errors="replace").splitlines()[-30:]
                print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
        self.close()


class _Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def progress(self, fraction: float, stage: str) -> None:
        pass


def build_template_tree(template: str, target: Path) -> None:
    """Build lxpy's template `template` into a new subvolume `target`.

    The same builder the daemon runs, with the suite's build cache: the
    Debian tree is the cached tarball lxpyd restores from too.
    """
    defn = find_template([builtin_template_dir()], template)
    btrfsutil.create_subvolume(target)
    report = _Quiet()
    try:
        trio.run(
            lambda: build_rootfs(
                defn,
                target,
                mirror="http://deb.debian.org/debian",
                cache_dir=TEST_CACHE,
                report=report,
            )
        )
    except BaseException:
        print("\n".join(report.lines[-20:]), file=sys.stderr)
        raise


def snapshot(src: Path, dst: Path) -> Path:
    btrfsutil.create_snapshot(src, dst)
    return dst


def delete_tree(path: Path) -> None:
    """Remove a subvolume (with any subvolume systemd made inside it)."""
    if path.exists():
        btrfsutil.delete_subvolume(path, recursive=True)


# -- LXC --------------------------------------------------------------------


class Lxc:
    """Containers in a scratch LXC path (`-P`), never the host's."""

    def __init__(self, scratch: Scratch, path: Path | None = None, lxcfs: bool = True) -> None:
        self.path = path or scratch.dir / "lxc"
        self.path.mkdir()
        # Containers bind lxcfs's files over their /proc and /sys, as
        # LXC's lxcfs package sets up (the same files lxpy binds, from the
        # same lxcfs), when lxcfs can be had.
        self.lxcfs = scratch.lxcfs() if lxcfs else None
        # LXC parks its monitor in a `lxc.pivot` cgroup of each hierarchy,
        # made on first use and never removed: remove it when we made it.
        self._own_pivot = not _lxc_pivots()
        scratch.defer(self.cleanup)

    def define(
        self, name: str, rootfs: Path, net: str = "lxc.net.0.type = empty\n", backing: str = "dir"
    ) -> None:
        """Keys LXC's common.conf sets that matter for booting systemd, and
        `net`: by default no network device (as for nspawn
        --private-network and lxpy network=). `backing`: LXC's storage type
        of `rootfs` (btrfs for a subvolume lxc-copy -s may snapshot)."""
        d = self.path / name
        d.mkdir(exist_ok=True)
        binds = "".join(
            f"lxc.mount.entry = {src} {dst.lstrip('/')} none bind,ro,optional 0 0\n"
            for src, dst in (lxcfs_mod.bind_mounts(self.lxcfs) if self.lxcfs else [])
        )
        (d / "config").write_text(
            f"lxc.uts.name = {name}\n"
            f"lxc.rootfs.path = {backing}:{rootfs}\n"
            "lxc.init.cmd = /sbin/init\n"
            f"{net}"
            "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed\n"
            "lxc.tty.max = 4\n"
            "lxc.pty.max = 1024\n"
            "lxc.autodev = 1\n"
            "lxc.apparmor.profile = unconfined\n"
            f"lxc.log.file = {d / 'log'}\n"
            "lxc.log.level = WARN\n"
            f"{binds}"
        )

    def argv(self, tool: str, name: str, *args: str) -> list[str]:
        return [tool, "-n", name, "-P", str(self.path), *args]

    def start(self, name: str) -> None:
        run(self.argv("lxc-start", name, "-d"))

    def init_pid(self, name: str) -> int:
        return int(run(self.argv("lxc-info", name, "-pH")).stdout)

    def stop(self, name: str, kill: bool = False) -> None:
        run(self.argv("lxc-stop", name, *(["-k"] if kill else [])), timeout=90)

    def running(self) -> list[str]:
        res = run(["lxc-ls", "-P", str(self.path), "--running", "-1"], check=False)
        return res.stdout.split()

    def monitors(self) -> list[int]:
        """PIDs of this path's `[lxc monitor]` processes."""
        tag = f"[lxc monitor] {self.path} "
        return [p for p in all_pids() if cmdline(p).startswith(tag)]

    def cleanup(self) -> None:
        for name in self.running():
            subprocess.run(self.argv("lxc-stop", name, "-k"), capture_output=True, timeout=60)
        shutil.rmtree(self.path, ignore_errors=True)
        if self._own_pivot:
            for d in _lxc_pivots():
                try:
                    d.rmdir()
                except OSError:
                    pass  # in use by another LXC container: it stays


def _lxc_pivots() -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob("*/lxc.pivot"))


# -- systemd-nspawn ---------------------------------------------------------


class Nspawn:
    """systemd-nspawn machines started in the background.

    Host PID 1 is not systemd here, so there is no machined to register
    with and no manager to make a scope unit: --register=no --keep-unit.
    """

    def __init__(self, scratch: Scratch) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._exe = os.path.realpath(shutil.which("systemd-nspawn") or "systemd-nspawn")
        scratch.defer(self.cleanup)

    def start(self, name: str, rootfs: Path) -> subprocess.Popen[bytes]:
        argv = [
            "systemd-nspawn", "-q", "-D", str(rootfs), "-M", name, "--boot",
            "--private-network", "--register=no", "--keep-unit",
        ]  # fmt: skip
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs[name] = p
        return p

    def leader(self, name: str, timeout: float = 30) -> int:
        """The container's init: the child of nspawn that has exec'd init."""
        p = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"systemd-nspawn for {name} exited {p.returncode}")
            for c in children(p.pid):
                try:
                    if os.readlink(f"/proc/{c}/exe") != self._exe:
                        return c
                except OSError:
                    continue
            time.sleep(0.001)
        raise TimeoutError(f"no init under systemd-nspawn for {name}")

    def poweroff(self, name: str, timeout: float = 60) -> None:
        """Clean shutdown: on SIGTERM nspawn sends init SIGRTMIN+3 (halt) and
        waits for the container to end."""
        p = self.procs.pop(name)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


# -- lxpy -------------------------------------------------------------------


def lxpy_can_run() -> bool:
    """Whether this checkout's CLI has `lxpy start` yet."""
    res = subprocess.run([LXPY, "start", "--help"], capture_output=True, timeout=30)
    return res.returncode == 0


class Lxpy:
    """A scratch lxpyd on the scratch directory: own pool, no default
    network, the suite's build cache."""

    def __init__(
        self,
        scratch: Scratch,
        pool_size: str = "6GiB",
        *,
        ksm: bool = True,
        read_ahead: bool = True,
        lxcfs: bool = True,
        settings: str = "",
    ) -> None:
        scratch.daemons += 1
        root = scratch.dir / (
            "lxpy-root" if scratch.daemons == 1 else f"lxpy-root{scratch.daemons}"
        )
        root.mkdir()
        # lxpyd's defaults (ksm, read-ahead and lxcfs on) unless asked
        # otherwise; lxcfs is the scratch area's, the one LXC binds from.
        mount = scratch.lxcfs() if lxcfs else None
        self.lxcfs = mount is not None
        self.ksm, self.read_ahead = ksm, read_ahead
        settings += f"ksm = {str(ksm).lower()}\nread_ahead = {str(read_ahead).lower()}\n"
        settings += f'lxcfs = "auto"\nlxcfs_mount = "{mount}"\n' if mount else 'lxcfs = "off"\n'
        # Where the daemon keeps its records, pool and run dir.
        self.paths = RootPaths(root)
        scratch.marks.append(str(self.paths.run.dir))
        # lxpyd starts ksmd when it is off; it is off again afterwards.
        scratch.defer(restore_ksm, ksm_state())
        self._closed = False
        self.daemon: Daemon = start_daemon(
            root,
            scratch.dir / f"{root.name}.sock",
            scratch.dir / f"{root.name}.log",
            settings=(
                f'pool_size = "{pool_size}"\nbuild_cache = "{TEST_CACHE}"\ndefault_network = ""\n'
                + settings
            ),
        )
        scratch.defer(self.cleanup)
        self.client = Client(str(self.daemon.socket), timeout=600)
        self.env = {**os.environ, "LXPY_SOCKET": str(self.daemon.socket)}

    def build(self, template: str) -> None:
        op = self.client.build_template(template)
        self.client.wait_operation(op["id"], timeout=600)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [LXPY, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"lxpy {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def create(self, name: str, template: str, privileged: bool = False) -> None:
        config: dict[str, object] = {"network": []}
        if privileged:
            config["security.privileged"] = "true"
        self.client.create_container(name, template, config)

    def start_api(self, name: str) -> dict[str, Any]:
        return self.client.request("POST", f"/1.0/containers/{name}/start", {})

    def stop_api(self, name: str, force: bool = False, timeout: int = 30) -> dict[str, Any]:
        body = {"timeout": timeout, "force": force}
        return self.client.request("POST", f"/1.0/containers/{name}/stop", body)

    def init_pid(self, name: str) -> int:
        # From the list: one container's full view also walks its disk use,
        # which would compete with a boot in progress.
        cts = self.client.request("GET", "/1.0/containers")
        pid = next((c.get("init_pid") for c in cts if c.get("name") == name), None)
        if not isinstance(pid, int):
            raise RuntimeError(f"lxpy reports no init_pid for running {name}")
        return pid

    def zygote(self) -> int | None:
        """lxpy's fork server for this daemon root (it writes its pid in the run dir)."""
        try:
            pid = int(self.paths.run.zygote_pid.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spares(self) -> list[int]:
        """The zygote's spare monitors: forked ahead, waiting for a start."""
        zygote = self.zygote()
        if zygote is None:
            return []
        spares = []
        for pid in children(zygote):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "lxpy-spare":
                        spares.append(pid)
            except OSError:
                continue
        return spares

    def cleanup(self) -> None:
        """Stop every container, lxpyd, and the zygote (which outlives lxpyd
        by design, as the monitors do); remove the daemon's run dir and its
        entry in the host-wide record of ID blocks."""
        if self._closed:
            return
        self._closed = True
        try:
            for ct in self.client.containers():
                if ct.get("state") not in ("STOPPED", "ERROR"):
                    try:
                        self.stop_api(ct["name"], force=True)
                    except Exception as e:  # cleanup goes on for the others
                        print(f"cleanup: stop {ct['name']}: {e}", file=sys.stderr)
        except Exception as e:
            print(f"cleanup: {e}", file=sys.stderr)
        zygote = self.zygote()
        stop_daemon(self.daemon)
        if zygote is not None:
            try:
                # It may end by itself meanwhile, once lxpyd is gone.
                os.kill(zygote, signal.SIGTERM)
                wait_gone(zygote, 5)
            except ProcessLookupError:
                pass
            except TimeoutError:
                os.kill(zygote, signal.SIGKILL)
                wait_gone(zygote, 5)
        shutil.rmtree(self.paths.run.dir, ignore_errors=True)
        forget_host_ids(self.daemon.root)
