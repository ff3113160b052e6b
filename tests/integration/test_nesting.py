"""security.nesting: container runtimes inside an unprivileged container.

Real containers through a real lxpyd. The kernel check that nesting is
about: a user namespace made inside the container may mount a fresh proc
only when the container's mount namespace holds one fully visible, and
the container's masked /proc is not (docs/security.md, "Nesting").
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Daemon, daemon_in, info, push

pytestmark = pytest.mark.integration

# A user, mount and pid namespace of its own, with a fresh /proc in it:
# what every nested runtime does first.
UNSHARE = "unshare -U -r -m -p -f --mount-proc sh -c 'echo pid=$$; cat /proc/self/uid_map'"


def run(
    d: Daemon, name: str, script: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`sh -c SCRIPT` as root inside, stdout and stderr together."""
    return subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", name, "--"]
        + ["sh", "-c", "exec 2>&1\n" + script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def bdaemon(tmp_path: Path, test_cache: Path) -> Iterator[Daemon]:
    with daemon_in(tmp_path, f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\n') as d:
        d.cli("template", "build", "busybox", timeout=300)
        yield d


def test_a_fresh_proc_in_a_nested_user_namespace_needs_nesting(bdaemon: Daemon) -> None:
    d = bdaemon
    d.cli("create", "plain", "-t", "busybox")
    d.cli("create", "nest", "-t", "busybox", "--set", "security.nesting=true")
    d.cli("start", "plain")
    d.cli("start", "nest")

    off = run(d, "plain", UNSHARE)
    assert off.returncode != 0, off.stdout
    assert "Operation not permitted" in off.stdout, off.stdout

    on = run(d, "nest", UNSHARE)
    assert on.returncode == 0, on.stdout
    # PID 1 of its own pid namespace, as root of a namespace that maps it
    # to the container's root (0 inside), never to host root.
    assert "pid=1" in on.stdout, on.stdout
    assert on.stdout.split()[-3:] == ["0", "0", "1"], on.stdout

    # The container's own /proc stays masked; the unmasked views are root's.
    masked = run(d, "nest", "grep -c ' /proc/' /proc/self/mountinfo; stat -c %a /dev/.lxc")
    assert int(masked.stdout.split()[0]) >= 5, masked.stdout
    assert masked.stdout.split()[1] == "700", masked.stdout
    assert "nesting on" in info(d, "nest")["security"]
    assert "nesting" not in info(d, "plain")["security"]


NESTING_TEMPLATES = Path(__file__).parent / "nesting"
DEBIAN = "debian-nesting"


def busybox_rootfs_tar(path: Path) -> None:
    """A rootfs tarball of the host's static busybox, for a nested runtime
    to import (no registry is reachable)."""
    import io
    import tarfile

    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "sbin", "run"):
            info_ = tarfile.TarInfo(d)
            info_.type, info_.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info_)
        tar.add("/bin/busybox", "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        init = tarfile.TarInfo("sbin/init")
        init.type, init.linkname = tarfile.SYMTYPE, "/bin/busybox"
        tar.addfile(init)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        entry = tarfile.TarInfo("etc/passwd")
        entry.size = len(passwd)
        tar.addfile(entry, io.BytesIO(passwd))


def boot_debian(d: Daemon, name: str, *sets: str) -> None:
    """Create and start a Debian container; wait until systemd runs."""
    d.cli("template", "build", DEBIAN, timeout=1800)
    d.cli("create", name, "-t", DEBIAN, *[a for s in sets for a in ("--set", s)])
    d.cli("start", name)
    # The bus may not be up yet: ask again until systemd answers.
    script = "until systemctl is-system-running --wait; do sleep 0.2; done"
    state = run(d, name, f"timeout 90 sh -c '{script}'", timeout=120).stdout.split()
    assert state[-1:] == ["running"], run(d, name, "systemctl --failed --no-legend").stdout


@pytest.fixture(scope="module")
def nest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One lxpyd with a booted Debian container with nesting on ("nest"),
    shared by the tests below (each boot of it costs seconds)."""
    tmp = tmp_path_factory.mktemp("nest")
    cache = Path("/var/cache/lxpy-tests")
    settings = (
        f'pool_size = "6GiB"\nbuild_cache = "{cache}"\ntemplate_dirs = ["{NESTING_TEMPLATES}"]\n'
    )
    with daemon_in(tmp, settings) as d:
        boot_debian(d, "nest", "security.nesting=true")
        tar = tmp / "bb.tar"
        busybox_rootfs_tar(tar)
        push(d, "nest", tar, "/root/bb.tar")
        yield d


def test_podman_runs_an_imported_image_with_its_own_network(nest: Daemon) -> None:
    d = nest
    res = run(
        d,
        "nest",
        "podman import /root/bb.tar localhost/bb >/dev/null && "
        "podman run --rm --network bridge localhost/bb "
        "sh -c 'ip -4 -o addr show eth0; cat /proc/self/uid_map; hostname'",
        timeout=300,
    )
    assert res.returncode == 0, res.stdout
    # Its own network: podman's bridge gave it an address of 10.88.0.0/16.
    assert " eth0 " in res.stdout and "inet 10.88." in res.stdout, res.stdout
    # Root in it is the outer container's root: its host ID, never host root.
    base = info(d, "nest")["idmap"]["uid_base"]
    assert f"0 {base} 65536" in " ".join(res.stdout.split()), res.stdout
