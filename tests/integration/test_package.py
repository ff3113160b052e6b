"""The Debian package: build it, install it with apt into a clean Debian 12
root, run what it installed there (with chroot), then remove and purge it.

The clean root is bootstrapped from the Debian mirror once a month and kept
as a tarball in the test cache; apt resolves the package's dependencies from
the mirror on every run (downloaded .debs are cached too). The tests of this
module share one installed root and run in file order: the last one removes
and purges the package.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lxpy import __version__
from lxpy.cli.completion import INSTALL_PATHS
from lxpy.errors import LxpyError
from lxpy.kernel.cgroups import ContainerCgroup, remove_parent
from lxpy.model.settings import Settings
from tests.conftest import REPO, unmount_all_under

pytestmark = pytest.mark.integration

SUITES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}
SOCKET = "/run/lxpy/lxpy.sock"


@dataclass
class Chroot:
    """A Debian 12 root in a scratch directory, with /proc, /sys and /dev."""

    root: Path
    deb: Path
    notes: dict[str, object] = field(default_factory=dict)

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["chroot", str(self.root), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=CHROOT_ENV,
            input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"in the chroot: {' '.join(argv)} exited {res.returncode}\n"
                f"stdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}"
            )
        return res

    def lxpy(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self.run("lxpy", "--socket", SOCKET, *args, check=check, timeout=timeout).stdout


def _sh(*argv: str, timeout: float = 600) -> None:
    subprocess.run(argv, check=True, timeout=timeout)


# -- the package ----------------------------------------------------------------


def clean_root_tarball(cache: Path) -> Path:
    """A minimal Debian 12 root as a tarball, bootstrapped once a month."""
    key = datetime.date.today().strftime("%Y-%m")
    tarball = cache / f"debian12-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    tmp = tarball.with_suffix(".tar.part")
    # minbase: only Priority required packages and apt, so a dependency the
    # package forgets to declare is missing here, not quietly present.
    _sh("mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "bookworm", str(tmp), *SUITES)
    tmp.rename(tarball)
    for old in cache.glob("debian12-minbase-*.tar"):
        if old != tarball:
            old.unlink()
    return tarball


def _kill_processes_under(root: Path) -> None:
    # Processes started in the chroot (lxpyd, the zygote, monitors) have it
    # as their root directory.
    target = str(root)
    for _ in range(50):
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                link = os.readlink(d / "root")
                if link == target or link.startswith(target + "/"):
                    found.append(int(d.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _kill_container_cgroups(name: str) -> None:
    # A container's init and its children, in their own mount namespace,
    # are found by their cgroup (lxpy.ROOTID/lxpy.payload.NAME on every
    # hierarchy), where the chroot's lxpyd on its /var/lib/lxpy put them.
    # The parent is the one an lxpyd of the host's own /var/lib/lxpy uses
    # too: it goes only when it holds no container, as lxpyd does it.
    parent = Settings(root=Path("/var/lib/lxpy")).cgroup_parent
    cg = ContainerCgroup.for_name(name, parent=parent)
    with contextlib.suppress(LxpyError):
        cg.kill(timeout=10)
    with contextlib.suppress(LxpyError):
        cg.remove(timeout=10)
    remove_parent(parent)


def _detach_loops_under(path: Path) -> None:
    res = subprocess.run(["losetup", "-J"], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        return
    for dev in json.loads(res.stdout).get("loopdevices", []):
        if str(dev.get("back-file", "")).startswith(str(path)):
            subprocess.run(["losetup", "-d", dev["name"]], check=False)


@pytest.fixture(scope="module")
def chroot(
    deb: Path, test_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    """The package installed with apt into a clean Debian 12 root."""
    scratch = tmp_path_factory.mktemp("pkgroot")
    root = scratch / "root"
    root.mkdir()
    tarball = clean_root_tarball(test_cache)
    _sh("tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball))
    env = Chroot(root, deb)
    env.notes["container"] = "pkg-" + secrets.token_hex(3)
    try:
        # The root as a mount point of its own, as on a real host: the
        # chroot's /proc/self/mounts then has an entry for "/".
        _sh("mount", "--bind", str(root), str(root))
        _sh("mount", "-t", "proc", "proc", str(root / "proc"))
        for fs in ("sys", "dev"):
            # Recursive (cgroups, devpts) and slave, so unmounting the
            # chroot's copies never unmounts the host's.
            _sh("mount", "--rbind", f"/{fs}", str(root / fs))
            _sh("mount", "--make-rslave", str(root / fs))
        archives = test_cache / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        _sh("mount", "--bind", str(archives), str(root / "var/cache/apt/archives"))
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # Nothing the packages install may start services on the host's
        # kernel from the chroot.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy(deb, root / "tmp" / deb.name)
        env.run("apt-get", "update", "-q", timeout=300)
        env.run("apt-get", "install", "-y", "-q", f"/tmp/{deb.name}", timeout=600)
        yield env
    finally:
        _kill_processes_under(root)
        _kill_container_cgroups(str(env.notes["container"]))
        unmount_all_under(scratch)
        _detach_loops_under(scratch)
        # Only after every mount is gone: never delete through a bind mount.
        mounted = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(scratch))
        ]
        if not mounted:
            shutil.rmtree(scratch, ignore_errors=True)


# -- the tests ----------------------------------------------------------------------


def test_installed_commands_run(chroot: Chroot) -> None:
    assert chroot.run("lxpy", "--version").stdout.strip() == f"lxpy {__version__}"
    assert "usage: lxpyd" in chroot.run("lxpyd", "--help").stdout
    if (REPO / "tui" / "app.py").exists():
        assert "usage" in chroot.run("lxpy-tui", "--help").stdout.lower()
    else:
        assert not (chroot.root / "usr/bin/lxpy-tui").exists()
    # The commands run from the private virtualenv, not a system python path.
    assert os.readlink(chroot.root / "usr/bin/lxpy") == "../lib/lxpy/bin/lxpy"
    status = chroot.run("dpkg-query", "-W", "-f=${Version} ${Status}", "lxpy").stdout
    assert status == f"{__version__} install ok installed"


def test_installed_files(chroot: Chroot) -> None:
    root = chroot.root
    conffiles = (root / "var/lib/dpkg/info/lxpy.conffiles").read_text().split()
    assert "/etc/lxpy/lxpyd.toml" in conffiles
    # The shipped settings file is all comments: lxpyd starts with defaults.
    chroot.run(
        "python3.11",
        "-c",
        "import tomllib; assert tomllib.load(open('/etc/lxpy/lxpyd.toml', 'rb')) == {}",
    )
    for name in ("busybox.toml", "debian-bookworm.toml"):
        assert (root / "usr/share/lxpy/templates" / name).is_file()
    unit = (root / "lib/systemd/system/lxpy.service").read_text()
    assert "ExecStart=/usr/bin/lxpyd" in unit
    assert "KillMode=process" in unit
    # Enabled on install (started too when systemd runs, which it does not
    # in a chroot).
    assert (root / "etc/systemd/system/multi-user.target.wants/lxpy.service").is_symlink()
    groups = [line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()]
    assert "lxpy" in groups and "lxpy-user" in groups
    # Completion for bash, zsh and fish where each looks, as the installed
    # `lxpy completion SHELL` prints it; bash completes from the installed lxpy.
    for shell, path in INSTALL_PATHS.items():
        assert chroot.run("lxpy", "completion", shell).stdout == (root / path).read_text()
    chroot.run("bash", "-n", "/usr/share/bash-completion/completions/lxpy")
    res = chroot.run(
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/lxpy; "
        'COMP_WORDS=(lxpy sn); COMP_CWORD=1; _lxpy; echo "${COMPREPLY[@]}"',
    )
    assert res.stdout == "snapshot\n"
    assert (root / "usr/share/man/man1/lxpy.1.gz").is_file()
    assert (root / "usr/share/man/man8/lxpyd.8.gz").is_file()
    # postinst compiled the byte-code the package does not ship.
    assert list((root / "usr/lib/lxpy/lib/python3.11/site-packages/lxpy").glob("__pycache__/*.pyc"))


def _state(chroot: Chroot, name: str) -> str:
    return str(json.loads(chroot.lxpy("info", name, "--format", "json")).get("state"))


def test_installed_lxpyd_runs_a_busybox_container(chroot: Chroot) -> None:
    """lxpyd from the package, on the default root /var/lib/lxpy of the
    chroot (a small loop pool), builds busybox and creates a container;
    starts it when the installed lxpy has `start`."""
    conf = chroot.root / "root/pkgtest.toml"
    # No default network: the test must not make or share the host's lxpybr0.
    # Nor turn the host's ksmd on and off beside the host's own lxpyd.
    conf.write_text('pool_size = "2GiB"\ndefault_network = ""\nksm = false\n')
    log = chroot.root.parent / "lxpyd.log"
    with log.open("ab") as logf:
        proc = subprocess.Popen(
            ["chroot", str(chroot.root), "lxpyd", "--config", "/root/pkgtest.toml"],
            stdout=logf,
            stderr=logf,
            env=CHROOT_ENV,
            start_new_session=True,
        )
    name = str(chroot.notes["container"])
    try:
        deadline = time.monotonic() + 60
        while not (chroot.root / SOCKET.lstrip("/")).exists():
            assert proc.poll() is None, f"lxpyd exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"lxpyd did not come up:\n{log.read_text()}"
            time.sleep(0.05)
        chroot.lxpy("template", "build", "busybox", timeout=300)
        # Privileged: in a chroot the kernel refuses user namespaces
        # (unshare(CLONE_NEWUSER) is EPERM), so no container is unprivileged.
        chroot.lxpy("create", name, "--template", "busybox", "--set", "security.privileged=true")
        assert _state(chroot, name) == "STOPPED"
        chroot.lxpy("start", name, timeout=60)
        deadline = time.monotonic() + 30
        while (state := _state(chroot, name)) != "RUNNING":
            assert time.monotonic() < deadline, f"{name} is {state}, not RUNNING"
            time.sleep(0.1)
    finally:
        # The service's stop: lxpyd ends, a running container keeps running.
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tree(path: Path, depth: int = 2) -> set[str]:
    if not path.exists():
        return set()
    found = set()
    for p in path.iterdir():
        found.add(str(p))
        if depth > 1 and p.is_dir() and not p.is_symlink():
            found |= _tree(p, depth - 1)
    return found


def test_remove_keeps_data_and_purge_removes_config(chroot: Chroot) -> None:
    root = chroot.root
    state = root / "var/lib/lxpy"
    # The container test leaves a pool with a container in it; when it did
    # not run, a file stands in for the user's data.
    if not state.exists():
        state.mkdir(parents=True)
        (state / "data").write_text("user data\n")
    before = _tree(state, 3)

    chroot.run("apt-get", "remove", "-y", "-q", "lxpy", timeout=300)
    assert not (root / "usr/bin/lxpy").exists()
    assert not (root / "usr/lib/lxpy/bin").exists()
    assert (root / "etc/lxpy/lxpyd.toml").exists(), "remove must keep the conffile"
    assert _tree(state, 3) == before

    chroot.run("apt-get", "purge", "-y", "-q", "lxpy", timeout=300)
    assert not (root / "etc/lxpy").exists()
    assert not (root / "usr/lib/lxpy").exists()
    assert not (root / "usr/share/lxpy").exists()
    assert not (root / "lib/systemd/system/lxpy.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/lxpy.service").exists()
    assert chroot.run("dpkg-query", "-W", "lxpy", check=False).returncode != 0 or (
        "not-installed" in chroot.run("dpkg-query", "-W", "-f=${Status}", "lxpy").stdout
    )
    assert _tree(state, 3) == before, "purge must never touch containers or the pool"
