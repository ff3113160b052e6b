"""An upgrade on a stock Debian 12 host: lxpy 0.1.0, with running
containers, replaced by the package built from this checkout.

0.1.0 is built from its own commit (OLD_COMMIT) and kept in the suite's
cache. It predates scopes: lxpyd ran its containers in cgroups it made at
the root of the hierarchy (`/lxpy.ROOTID/lxpy.payload.NAME`), below a
`Delegate=yes` service. It could start nothing on a shared `/` until the
admin made the pool mount private, which is what an admin who used it on
such a host had done, and what the test does too. After the upgrade the
new lxpyd must adopt those containers where they are, manage them there
(live limits, stats, exec), move their monitors out of lxpy.service, and
start them in scopes of their own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy import __version__
from tests.conftest import REPO
from tests.vm.guest import Guest
from tests.vm.stock import (
    ROOT_ID,
    cgroup_of,
    cursor,
    info,
    install,
    journal_since,
    lxpy,
    parent_of,
    prepare,
    scope,
    wait,
    wait_running,
)

TIME_BOUND = 900
OLD_VERSION = "0.1.0"
OLD_COMMIT = "881f0201ee8e5e6c6fffb828513fa4c83d6d9fd1"
LEGACY = f"/lxpy.{ROOT_ID}"


@pytest.fixture(scope="module")
def old_deb(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lxpy 0.1.0's package, built from OLD_COMMIT once per machine."""
    cached = test_cache / "debs" / f"lxpy_{OLD_VERSION}_{OLD_COMMIT[:12]}.deb"
    if cached.is_file():
        return cached
    has = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", OLD_COMMIT], check=False)
    assert has.returncode == 0, f"commit {OLD_COMMIT} (lxpy {OLD_VERSION}) is not in this clone"
    src = tmp_path_factory.mktemp("old-src")
    out = tmp_path_factory.mktemp("old-dist")
    archive = subprocess.Popen(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0
    res = subprocess.run(
        [str(src / "scripts" / "build-deb"), "--install-deps", "--no-lintian", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"build-deb of {OLD_VERSION} failed:\n{res.stderr[-5000:]}"
    (built,) = out.glob(f"lxpy_{OLD_VERSION}_*.deb")
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, cached)
    shutil.rmtree(src)
    return cached


@pytest.fixture(scope="module")
def old_host(guest: Guest, old_deb: Path) -> Iterator[Guest]:
    """The guest running lxpy 0.1.0 with two busybox containers running,
    one unprivileged (u1) and one privileged (p1)."""
    prepare(guest)
    install(guest, old_deb)
    wait(guest, "lxpy list >/dev/null 2>&1", 60, "lxpyd 0.1.0 to answer")
    guest.run("mount --make-private /var/lib/lxpy/pool")
    lxpy(guest, "template build busybox")
    lxpy(guest, "create u1 -t busybox")
    lxpy(guest, "create p1 -t busybox --set security.privileged=true")
    lxpy(guest, "start u1 p1")
    yield guest


def test_old_containers_run_in_cgroups_of_lxpyd_s_own(old_host: Guest) -> None:
    g = old_host
    assert g.run("dpkg-query -W -f='${Version}' lxpy").stdout == OLD_VERSION
    pids = wait_running(g, ("u1", "p1"))
    for name, pid in pids.items():
        assert cgroup_of(g, pid).startswith(f"0::{LEGACY}/lxpy.payload.{name}")


def test_an_upgrade_adopts_the_running_containers(old_host: Guest, deb: Path) -> None:
    g = old_host
    before = wait_running(g, ("u1", "p1"))
    install(g, deb)
    assert g.run("dpkg-query -W -f='${Version}' lxpy").stdout == __version__
    assert g.run("systemctl is-active lxpy").stdout.strip() == "active"
    assert g.run("systemctl is-enabled lxpy-containers").stdout.strip() == "enabled"
    # The same processes, where 0.1.0 put them, and managed there; their
    # monitors out of lxpyd's unit, each in its container's scope.
    assert wait_running(g, ("u1", "p1")) == before
    for name, pid in before.items():
        assert cgroup_of(g, pid).startswith(f"0::{LEGACY}/lxpy.payload.{name}")
        assert cgroup_of(g, parent_of(g, pid)) == f"0::/machine.slice/{scope(name)}"
    mark = cursor(g)
    g.run("systemctl restart lxpy")
    assert wait_running(g, ("u1", "p1")) == before
    journal = journal_since(g, mark)
    assert not re.search(r"left-over process|remains running", journal), journal
    lxpy(g, "config set u1 limits.memory 128MiB")
    legacy = f"/sys/fs/cgroup{LEGACY}/lxpy.payload.u1"
    assert g.run(f"cat {legacy}/memory.max").stdout.strip() == str(128 << 20)
    assert info(g, "u1")["stats"]["memory_limit_bytes"] == 128 << 20
    assert g.run("lxpy exec p1 -- cat /etc/hostname").stdout.strip() == "p1"
    assert g.run("lxpy exec u1 -- id -u").stdout.strip() == "0"


def test_adopted_containers_restart_into_scopes(old_host: Guest) -> None:
    g = old_host
    lxpy(g, "restart u1")
    lxpy(g, "restart p1")
    pids = wait_running(g, ("u1", "p1"))
    for name, pid in pids.items():
        assert cgroup_of(g, pid).startswith(f"0::/machine.slice/{scope(name)}/lxpy.payload.{name}")
        assert cgroup_of(g, parent_of(g, pid)) == f"0::/machine.slice/{scope(name)}/lxpy.monitor"
    # The limit set before went with the container into its scope.
    assert info(g, "u1")["stats"]["memory_limit_bytes"] == 128 << 20
    # Nothing is left in the cgroups 0.1.0 made.
    assert g.run(f"cat /sys/fs/cgroup{LEGACY}/*/cgroup.procs 2>/dev/null", check=False).stdout == ""
