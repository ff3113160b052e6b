"""Containers on a host whose `/` is shared, as systemd makes it.

On a systemd host every mount is shared, so the pool lxpyd mounts is too.
Each test here runs lxpyd in a mount namespace of its own whose `/` is made
rshared (`unshare --mount --propagation shared`), which gives its pool the
same propagation as on such a host while the test machine's own mount
table stays as it is. Every launch path must then still pivot into the
rootfs, and none of a container's mounts (its /proc, /sys, /dev, /run) may
appear in lxpyd's mount table: there they would be the host's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.model.paths import PoolPaths
from tests.conftest import Daemon, daemon_in, info
from tests.integration.test_network_e2e import Lab, lab_on

pytestmark = pytest.mark.integration

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"

TIME_BOUND = 240


@pytest.fixture
def shared_lab(tmp_path: Path, test_cache: Path) -> Iterator[Lab]:
    settings = f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
    prefix = (UNSHARE, "--mount", "--propagation", "shared")
    with daemon_in(tmp_path, settings, prefix=prefix) as d, lab_on(d, tmp_path) as lab:
        yield lab


def _mountinfo(d: Daemon) -> list[list[str]]:
    # lxpyd's own view: the mount namespace that stands for the host here.
    text = Path(f"/proc/{d.proc.pid}/mountinfo").read_text()
    return [line.split() for line in text.splitlines()]


def container_mounts(d: Daemon) -> list[str]:
    """Mount points below the pool's container subvolumes in lxpyd's mount table."""
    under = f"{d.root}/pool/containers/"
    return [f[4] for f in _mountinfo(d) if f[4].startswith(under)]


def test_every_launch_path_starts_on_a_shared_root(shared_lab: Lab) -> None:
    lab = shared_lab
    d = lab.d
    pool = [f for f in _mountinfo(d) if f[4] == str(d.paths.pool_dir)]
    # The premise: the pool is shared, as it is under systemd.
    assert pool and any(opt.startswith("shared:") for opt in pool[0][6:]), pool
    d.cli("template", "build", "busybox")
    lab.make_network()
    priv, bare, netted = lab.names("priv", "bare", "netted")
    # Privileged; unprivileged on no network (init cloned into its user
    # namespace); unprivileged on a network (a pinned user namespace).
    d.cli("create", priv, "-t", "busybox", "--set", "security.privileged=true")
    d.cli("create", bare, "-t", "busybox")
    lab.containers |= {priv, bare}
    lab.create(netted, "busybox")
    d.cli("start", priv, bare)
    lab.start(netted)
    for name in (priv, bare, netted):
        ct = info(d, name)
        assert ct["state"] == "RUNNING", ct
        # Inside, / is the rootfs and private: nothing the container
        # mounts can reach the host either.
        res = lab.run_in(name, "/bin/busybox", "cat", "/proc/self/mountinfo")
        root = next(line.split() for line in res.stdout.splitlines() if line.split()[4] == "/")
        assert not any(opt.startswith("shared:") for opt in root[6:]), root
    assert container_mounts(d) == []
    d.cli("stop", "--force", priv)
    d.cli("stop", "--force", bare)
    d.cli("stop", "--force", netted)
    assert container_mounts(d) == []


def test_a_failed_start_leaves_no_mount_on_the_host(shared_lab: Lab) -> None:
    d = shared_lab.d
    d.cli("template", "build", "busybox")
    (name,) = shared_lab.names("noinit")
    d.cli("create", name, "-t", "busybox")
    shared_lab.containers.add(name)
    # It fails in the launch, with its rootfs attached: /proc is no
    # directory to mount proc on. (The pool is mounted in lxpyd's own
    # mount namespace.)
    pool = PoolPaths(Path(f"/proc/{d.proc.pid}/root{d.paths.pool_dir}"))
    proc = pool.container(name) / "proc"
    proc.rmdir()
    proc.write_text("")
    res = d.cli("start", name, check=False)
    assert res.returncode != 0 and "/proc" in res.stderr, res.stderr
    assert info(d, name)["state"] == "STOPPED"
    assert container_mounts(d) == []
