"""The pool is not a way to host root: an ordinary host user against the pool.

Root in a container plants a setuid-root shell in its rootfs (on disk it is
owned by 0, for an unprivileged container too: its files are idmapped). A
fresh host user, made for the test, then tries to reach it, and everything
else of the pool, through every path the host has: the container's volume,
its snapshot, the template, the loop image. Each attempt must fail with
EACCES, while setuid programs keep working inside the container on every
launch path (unprivileged on no network: init cloned into its namespaces;
unprivileged on a network: a pinned user namespace; privileged).

The daemons here live under a directory every host user may pass through
(pytest's tmp_path sits in a 0700 directory of root's, which would hide the
pool whatever lxpy does), so that only lxpy's own modes stand in the way.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, daemon_in, start_again, stop_daemon, unmount_all_under
from tests.integration.test_escape import DEBIAN, boot, sh
from tests.integration.test_network import free_subnet, net_name, scrub

pytestmark = pytest.mark.integration

TIME_BOUND = 900
SUID = "/usr/local/bin/suidsh"
# Debian's own setuid-root programs, in every Debian rootfs and template.
DEBIAN_SUID = "/usr/bin/su"
# The pool, its trees and each container's snapshot directory: root's alone.
CLOSED_MODE = 0o700


@pytest.fixture
def stranger() -> Iterator[pwd.struct_passwd]:
    """A fresh host account, removed afterwards (a system account: useradd
    gives it no /etc/subuid range, so root's ranges stay as they are)."""
    name = f"lxpyt{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", name],
        check=True,
        timeout=30,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any host user may pass through (not list), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="lxpy-pool-access-", dir="/tmp"))
    try:
        base.chmod(0o711)
        yield base
    finally:
        unmount_all_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pool_daemon(open_dir: Path, test_cache: Path) -> Iterator[Daemon]:
    """A real lxpyd whose loop-file pool it makes itself, under `open_dir`."""
    settings = f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
    try:
        with daemon_in(open_dir, settings) as d:
            yield d
    finally:
        # What a network of the test left, once its containers are gone.
        scrub(open_dir / "root")


def as_user(user: pwd.struct_passwd, script: str) -> subprocess.CompletedProcess[str]:
    """`sh -c SCRIPT` as `user` on the host, stdout and stderr together."""
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        + ["sh", "-c", "exec 2>&1\n" + script],
        capture_output=True,
        text=True,
        timeout=30,
    )


def plant(d: Daemon, name: str) -> None:
    """Root inside makes a setuid-root copy of dash."""
    out = sh(d, name, f"cp /bin/dash {SUID} && chmod 4755 {SUID} && echo planted").stdout
    assert "planted" in out, out


def assert_setuid_works_inside(d: Daemon, name: str) -> None:
    """A non-root user inside gains root through the planted shell, and
    Debian's setuid passwd reads the shadow file for it (without setuid it
    says `nobody L never -1 -1 -1 -1`: no access to /etc/shadow)."""
    out = sh(d, name, f"su -s /bin/sh nobody -c '{SUID} -p -c \"id -u\"; id -u; passwd -S'")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines[:2] == ["0", "65534"], out.stdout
    assert lines[2].startswith("nobody L ") and " 99999 " in lines[2], out.stdout


def pool_paths(d: Daemon, name: str) -> list[Path]:
    """Every host path to the planted file, and to Debian's own setuid file."""
    pool = d.paths.pool
    return [
        pool.container(name) / SUID.lstrip("/"),
        pool.snapshot(name, "before") / SUID.lstrip("/"),
        pool.template(DEBIAN) / DEBIAN_SUID.lstrip("/"),
    ]


def assert_out_of_reach(d: Daemon, name: str, user: pwd.struct_passwd) -> None:
    for path in pool_paths(d, name):
        assert os.stat(path).st_mode & stat.S_ISUID and os.stat(path).st_uid == 0, path
        out = as_user(user, f"stat -c %a {path}; echo rc=$?; {path} -p -c 'id -u'; echo rc=$?")
        assert out.stdout.count("Permission denied") == 2, (path, out.stdout)
        assert "rc=0" not in out.stdout, (path, out.stdout)
    # Not the directories on the way either, nor the image holding them all.
    pool = d.paths.pool
    for path in [pool.path, *pool.trees, pool.snapshot_dir(name)]:
        assert stat.S_IMODE(os.stat(path).st_mode) == CLOSED_MODE, path
        out = as_user(user, f"ls {path}/; cd {path}; echo rc=$?")
        assert "rc=0" not in out.stdout, (path, out.stdout)
    out = as_user(user, f"head -c1 {d.paths.pool_image} >/dev/null; echo rc=$?")
    assert "Permission denied" in out.stdout and "rc=1" in out.stdout, out.stdout


def assert_nosuid_behind_the_modes(d: Daemon, name: str, user: pwd.struct_passwd) -> None:
    """With the directories opened by hand (a mistaken chmod), the planted
    shell still gives a host user nothing: the pool is mounted nosuid."""
    opened = [d.paths.pool_dir, d.paths.pool.containers]
    try:
        for p in opened:
            p.chmod(0o711)
        path = pool_paths(d, name)[0]
        out = as_user(user, f"{path} -p -c 'id -u'")
        assert out.stdout.split() == [str(user.pw_uid)], out.stdout
    finally:
        for p in opened:
            p.chmod(CLOSED_MODE)


def test_no_host_user_reaches_a_setuid_file_of_any_container(
    pool_daemon: Daemon, stranger: pwd.struct_passwd
) -> None:
    d = pool_daemon
    net = net_name()
    d.cli("network", "create", net, "--subnet", free_subnet(), "--no-nat")
    try:
        # The three launch paths: init cloned into its own user namespace
        # (no network), a pinned user namespace (a network), privileged.
        kinds = {
            "unpriv": (),
            "netted": (f"network={net}",),
            "priv": ("security.privileged=true",),
        }
        for name, sets in kinds.items():
            boot(d, name, *sets)
            plant(d, name)
            assert_setuid_works_inside(d, name)
            d.cli("snapshot", "create", name, "before")
        for name in kinds:
            assert_out_of_reach(d, name, stranger)
        assert_nosuid_behind_the_modes(d, "unpriv", stranger)
        # Restored from the snapshot: the rootfs is a new volume, as closed.
        d.cli("stop", "unpriv")
        d.cli("snapshot", "restore", "unpriv", "before")
        d.cli("copy", "unpriv", "copied")
        d.cli("rename", "copied", "renamed")
        d.cli("snapshot", "create", "renamed", "again")  # "before" came with the copy
        d.cli("start", "unpriv")
        assert_setuid_works_inside(d, "unpriv")
        for name in ("unpriv", "renamed"):
            assert_out_of_reach(d, name, stranger)
    finally:
        for name in ("unpriv", "netted", "priv", "renamed"):
            d.cli("destroy", name, "--force", check=False)
        d.cli("network", "delete", net, check=False)


def test_a_pool_made_open_is_closed_when_lxpyd_starts(
    pool_daemon: Daemon, stranger: pwd.struct_passwd
) -> None:
    d = pool_daemon
    boot(d, "old")
    plant(d, "old")
    d.cli("snapshot", "create", "old", "before")
    stop_daemon(d)
    # What an lxpyd before the fix left: the pool 0711, its trees and
    # snapshot directories 0755, the image 0644 and its mount without
    # nosuid and nodev. The container runs on meanwhile.
    pool = d.paths.pool_dir
    pool.chmod(0o711)
    for p in [*d.paths.pool.trees, d.paths.pool.snapshot_dir("old")]:
        p.chmod(0o755)
    d.paths.pool_image.chmod(0o644)
    subprocess.run(["mount", "-o", "remount,bind,suid,dev", str(pool)], check=True, timeout=30)
    assert not os.statvfs(pool).f_flag & os.ST_NOSUID
    out = as_user(stranger, f"{pool_paths(d, 'old')[0]} -p -c 'id -u'")
    assert out.stdout.split() == ["0"], "the set-up must be the hole it claims to be"

    d = start_again(d, d.root.parent / "lxpyd-again.log")
    try:
        flags = os.statvfs(pool).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        assert stat.S_IMODE(d.paths.pool_image.stat().st_mode) == 0o600
        assert_out_of_reach(d, "old", stranger)
        # The running container never noticed; a restart neither.
        assert_setuid_works_inside(d, "old")
        d.cli("restart", "old")
        assert_setuid_works_inside(d, "old")
    finally:
        d.cli("destroy", "old", "--force", check=False)
        stop_daemon(d)


def test_a_bootstrap_tool_gets_a_target_with_devices_and_setuid(
    open_dir: Path, stranger: pwd.struct_passwd
) -> None:
    """debootstrap refuses a nodev target, and a template built without
    device nodes or working setuid would not be what it is elsewhere: the
    bootstrap tools run where their target has both (lxpy.build.mountns),
    while the host's view of the pool keeps neither."""
    from lxpy.build.mountns import in_own_mounts
    from lxpy.model.settings import Settings
    from lxpy.storage.mounts import mounts_under
    from lxpy.storage.pool import open_pool

    root = open_dir / "root"
    backend = open_pool(Settings(root=root, storage="btrfs"))
    target = backend.begin_template("t")
    user = f"setpriv --reuid={stranger.pw_uid} --regid={stranger.pw_gid} --clear-groups"
    # Relative paths from inside the target: its parents are closed.
    script = (
        'exec 2>&1; cd "$1"; echo x > null && echo dev=ok; '
        f"{user} ./suidsh -p -c 'echo euid=$(id -u)'"
    )
    subprocess.run(["mknod", str(target / "null"), "c", "1", "3"], check=True, timeout=30)
    shutil.copy("/bin/dash", target / "suidsh")
    (target / "suidsh").chmod(0o4755)
    flags = os.statvfs(backend.path).f_flag
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    before = mounts_under(open_dir)

    inside = subprocess.run(
        in_own_mounts(target, ["sh", "-c", script, "sh", str(target)]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert inside.stdout.split() == ["dev=ok", "euid=0"], inside
    outside = subprocess.run(
        ["sh", "-c", script, "sh", str(target)], capture_output=True, text=True, timeout=30
    )
    assert "Permission denied" in outside.stdout and "dev=ok" not in outside.stdout, outside
    assert f"euid={stranger.pw_uid}" in outside.stdout, outside
    # Nothing the tool's namespace had shows in the host's.
    assert mounts_under(open_dir) == before
    backend.abort_template("t")
