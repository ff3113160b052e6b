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

from lxpy.kernel.cgroups import MAX_DEPTH, MAX_DESCENDANTS, ContainerCgroup
from lxpy.model.settings import Settings
from tests.conftest import REPO, VENV_BIN, Daemon, daemon_in, info, push
from tests.integration.test_network import free_subnet, net_name

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
    net = net_name()
    # No NAT: nothing leaves the host.
    d.cli("network", "create", net, "--subnet", free_subnet(), "--no-nat")
    try:
        d.cli("create", "plain", "-t", "busybox")
        d.cli("create", "nest", "-t", "busybox", "--set", "security.nesting=true")
        # Each launch path: on a network the user namespace is pinned
        # first and a helper enters it; privileged, there is none.
        d.cli("create", "netnest", "-t", "busybox", "--set", "security.nesting=true")
        d.cli("config", "set", "netnest", "network", net)
        d.cli("create", "privnest", "-t", "busybox", "--set", "security.nesting=true")
        d.cli("config", "set", "privnest", "security.privileged", "true")
        for name in ("plain", "nest", "netnest", "privnest"):
            d.cli("start", name)

        off = run(d, "plain", UNSHARE)
        assert off.returncode != 0, off.stdout
        assert "Operation not permitted" in off.stdout, off.stdout

        for name in ("nest", "netnest", "privnest"):
            on = run(d, name, UNSHARE)
            assert on.returncode == 0, (name, on.stdout)
            # PID 1 of its own pid namespace, as root of a namespace that
            # maps it to the container's root (0 inside), never more.
            assert "pid=1" in on.stdout, (name, on.stdout)
            assert on.stdout.split()[-3:] == ["0", "0", "1"], (name, on.stdout)
            nodes = run(d, name, "exec 3<>/dev/fuse 4<>/dev/net/tun && echo nodes-ok")
            assert "nodes-ok" in nodes.stdout, (name, nodes.stdout)
        for name in ("plain", "nest", "privnest"):
            d.cli("stop", name, "--force")
    finally:
        # A network a container names cannot be deleted: that one goes first.
        d.cli("destroy", "--force", "netnest", check=False)
        d.cli("network", "delete", net)

    # The container's own /proc stays masked; the unmasked views are root's.
    d.cli("start", "nest")
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
        # What busybox init runs when booted (systemd-nspawn -b): a
        # long-lived process to look for.
        for member, text in (
            ("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"),
            ("etc/inittab", b"::respawn:/bin/sleep 3600\n"),
        ):
            entry = tarfile.TarInfo(member)
            entry.size = len(text)
            tar.addfile(entry, io.BytesIO(text))


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
def nest(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Iterator[Daemon]:
    """One lxpyd with a booted Debian container with nesting on ("nest"),
    shared by the tests below (each boot of it costs seconds)."""
    tmp = tmp_path_factory.mktemp("nest")
    # The template is built once from the mirror on the host and kept in
    # the suite's cache (about two minutes; then seconds).
    settings = (
        f'pool_size = "6GiB"\nbuild_cache = "{test_cache}"\n'
        f'template_dirs = ["{NESTING_TEMPLATES}"]\n'
    )
    with daemon_in(tmp, settings) as d:
        # 131072 IDs: the upper 65536 are for what runs nested (nspawn
        # wants a block of 65536 starting at a multiple of it).
        boot_debian(d, "nest", "security.nesting=true", "security.idmap.size=131072")
        tar = tmp / "bb.tar"
        busybox_rootfs_tar(tar)
        push(d, "nest", tar, "/root/bb.tar")
        yield d


@pytest.mark.parametrize(
    ("runtime", "subnet"),
    # Each on its own default bridge, in the container's own network
    # namespace: podman's (netavark, 10.88.0.0/16), docker0 (172.17.0.0/16).
    [("podman", "10.88."), ("docker", "172.17.")],
)
def test_a_runtime_runs_an_imported_image_with_its_own_network(
    nest: Daemon, runtime: str, subnet: str
) -> None:
    d = nest
    res = run(
        d,
        "nest",
        f"{runtime} import /root/bb.tar localhost/bb >/dev/null && "
        f"{runtime} run --rm --network bridge localhost/bb "
        "sh -c 'ip -4 -o addr show eth0; cat /proc/self/uid_map; "
        "grep Seccomp_filters /proc/self/status'",
        timeout=300,
    )
    assert res.returncode == 0, res.stdout
    assert " eth0 " in res.stdout and f"inet {subnet}" in res.stdout, res.stdout
    # Its runtime loaded its own syscall filter on top of the container's.
    assert int(res.stdout.split("Seccomp_filters:")[1].split()[0]) >= 2, res.stdout
    # Root in it is the outer container's root: its host ID, never host root.
    ids = info(d, "nest")["idmap"]
    assert f"0 {ids['uid_base']} {ids['size']}" in " ".join(res.stdout.split()), res.stdout


def test_cgroups_are_delegated_and_fuse_tun_overlayfs_work(nest: Daemon) -> None:
    d = nest
    # Hybrid host: the v1 controllers beside cgroup2, each the container's
    # own subtree, where its root makes and limits cgroups of its own.
    res = run(
        d,
        "nest",
        "cd /sys/fs/cgroup && ls && "
        "mkdir -p memory/t unified/t pids/t && echo 64M > memory/t/memory.limit_in_bytes && "
        "echo 50 > pids/t/pids.max && sh -c 'echo $$ > memory/t/cgroup.procs; "
        "echo $$ > pids/t/cgroup.procs; echo $$ > unified/t/cgroup.procs; "
        'grep -E "memory|pids|^0::" /proc/self/cgroup\'; '
        "cat memory/t/memory.limit_in_bytes; rmdir memory/t unified/t pids/t",
    )
    assert res.returncode == 0, res.stdout
    out = res.stdout.split()
    assert {"memory", "pids", "cpu", "systemd", "unified"} <= set(out), res.stdout
    assert {"4:memory:/t", "0::/t"} <= set(out) and "67108864" in out, res.stdout
    assert any(line.endswith("pids:/t") for line in out), res.stdout
    # Its own limits stay the host's: the files are host root's.
    res = run(d, "nest", "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert res.returncode != 0 and "Permission denied" in res.stdout, res.stdout

    # /dev/fuse and /dev/net/tun open; a TUN device can be made; overlayfs
    # mounts (the kernel allows it in a user namespace).
    res = run(
        d,
        "nest",
        "exec 3<>/dev/fuse && echo fuse-ok; ip tuntap add mode tun name tun7 && "
        "ip -o link show tun7 && ip tuntap del mode tun name tun7; "
        "mkdir -p /o/l /o/u /o/w /o/m && echo low > /o/l/f && "
        "mount -t overlay overlay -o lowerdir=/o/l,upperdir=/o/u,workdir=/o/w /o/m && "
        "echo up > /o/m/g && cat /o/m/f && ls /o/u; umount /o/m; rm -rf /o",
    )
    assert res.returncode == 0, res.stdout
    assert "fuse-ok" in res.stdout and "tun7:" in res.stdout, res.stdout
    assert res.stdout.split()[-2:] == ["low", "g"], res.stdout


def test_systemd_nspawn_boots_a_container_inside(nest: Daemon) -> None:
    d = nest
    res = run(
        d,
        "nest",
        # Not /var/lib/machines: a subvolume in the template, which its
        # snapshot (the container) holds only as an empty stub.
        "set -e; mkdir -p /srv/bb; cd /srv/bb; tar xf /root/bb.tar; "
        "echo ID=busybox > etc/os-release; "
        "systemd-run --unit nspawn-bb --quiet systemd-nspawn -q -D /srv/bb -M bb "
        "--private-network -b; "
        "for i in $(seq 100); do machinectl show bb -p Leader --value 2>/dev/null | "
        "grep -q . && break; sleep 0.1; done; "
        "L=$(machinectl show bb -p Leader --value); "
        "for i in $(seq 100); do nsenter -t $L -p -m -r ps 2>/dev/null | "
        "grep -q 'sleep 3600' && break; sleep 0.1; done; "
        "machinectl list --no-legend; nsenter -t $L -p -m -r ps; "
        "nsenter -t $L -n ip -o link | cut -d: -f2; machinectl poweroff bb",
        timeout=180,
    )
    assert res.returncode == 0, res.stdout
    assert "bb container systemd-nspawn busybox" in " ".join(res.stdout.split()), res.stdout
    # Booted: busybox init is PID 1 of its own pid namespace and has
    # started what its inittab says; its network is its own (lo only).
    assert "1 root init" in " ".join(res.stdout.split()), res.stdout
    assert "sleep 3600" in res.stdout, res.stdout
    assert "eth0" not in res.stdout, res.stdout


def test_lxpy_runs_inside_lxpy(nest: Daemon, tmp_path: Path) -> None:
    d = nest
    # This checkout and its virtualenv, at the same paths inside (the
    # container has Debian's python3.11 and lxpy's other dependencies).
    venv = VENV_BIN.parent
    tar = tmp_path / "lxpy.tar"
    paths = [p.relative_to("/") for p in (REPO / "lxpy", REPO / "templates", venv)]
    subprocess.run(
        ["tar", "-C", "/", "-cf", str(tar), "--exclude=__pycache__", *map(str, paths)],
        check=True,
        timeout=120,
    )
    push(d, "nest", tar, "/root/lxpy.tar")
    # The directory backend: no loop device inside.
    conf = tmp_path / "lxpyd.toml"
    conf.write_text('storage = "dir"\nlxcfs = "off"\ndefault_network = ""\n')
    push(d, "nest", conf, "/etc/lxpy-inner/lxpyd.toml")
    inner = f"{VENV_BIN}/lxpy --socket /run/lxpy-inner.sock"
    res = run(
        d,
        "nest",
        "set -e; tar -C / -xf /root/lxpy.tar; rm /root/lxpy.tar; "
        # Root's IDs inside: the upper half of the container's map.
        "echo root:65536:65536 > /etc/subuid; echo root:65536:65536 > /etc/subgid; "
        f"systemd-run --unit lxpy-inner --quiet {VENV_BIN}/lxpyd --root /var/lib/lxpy-inner "
        "--socket /run/lxpy-inner.sock --config /etc/lxpy-inner/lxpyd.toml; "
        "for i in $(seq 300); do test -S /run/lxpy-inner.sock && break; sleep 0.1; done; "
        f"{inner} template build busybox >/dev/null; "
        # Shared range: the only block of 65536 IDs root has inside.
        f"{inner} create bb -t busybox --set security.idmap.isolated=false >/dev/null; "
        f"{inner} start bb; "
        f"{inner} exec bb -- sh -c 'cat /proc/self/uid_map; ps'; "
        f"{inner} info bb | grep -E '^(state|security):'; {inner} stop bb",
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + run(d, "nest", "journalctl -u lxpy-inner").stdout
    text = " ".join(res.stdout.split())
    assert "started bb" in text and "state: RUNNING" in text, res.stdout
    # Unprivileged inside the unprivileged container: its root is ID 65536
    # of the outer container, which is no host root either.
    assert "0 65536 65536" in text, res.stdout
    assert "1 root init" in text, res.stdout


def _cgroup(d: Daemon, name: str) -> ContainerCgroup:
    """Container `name`'s cgroups on the host."""
    return ContainerCgroup.for_name(name, parent=Settings(root=d.root).cgroup_parent)


def test_what_root_makes_in_its_cgroups_does_not_outlive_a_stop(bdaemon: Daemon) -> None:
    d = bdaemon
    d.cli("create", "nb", "-t", "busybox", "--set", "security.nesting=true")
    d.cli("start", "nb")
    # A process frozen in a v1 freezer cgroup of root's own (docker pause
    # does this): SIGKILL alone would never end it.
    ice = "/sys/fs/cgroup/freezer/ice"
    frozen = run(
        d,
        "nb",
        f"mkdir {ice} && (setsid sleep 100000 </dev/null >/dev/null 2>&1 &) && sleep 0.2 "
        f"&& for p in $(pidof sleep); do echo $p > {ice}/cgroup.procs; done "
        f"&& echo FROZEN > {ice}/freezer.state && cat {ice}/freezer.state",
    )
    assert frozen.returncode == 0 and "FROZEN" in frozen.stdout, frozen.stdout
    # A chain of cgroups deeper than any recursion: v1 bounds no depth.
    deep = run(
        d,
        "nb",
        "cd /sys/fs/cgroup/cpu && i=0; while [ $i -lt 1100 ]; do mkdir a && cd a; "
        "i=$((i+1)); done; pwd | tr -cd / | wc -c",
    )
    assert deep.returncode == 0 and int(deep.stdout.split()[-1]) > 1100, deep.stdout
    d.cli("stop", "nb", "--force", timeout=60)
    assert info(d, "nb")["state"] == "STOPPED"
    assert not _cgroup(d, "nb").exists()
    # And it starts again.
    d.cli("start", "nb")
    assert info(d, "nb")["state"] == "RUNNING"


def test_a_container_makes_a_bounded_number_of_cgroups(bdaemon: Daemon) -> None:
    # Most of a cgroup's kernel memory is charged to nobody: on cgroup v2
    # the container's subtree is bounded, nesting or not.
    d = bdaemon
    d.cli("create", "cb", "-t", "busybox")
    d.cli("start", "cb")
    unified = _cgroup(d, "cb").unified
    assert unified is not None
    assert Path(unified, "cgroup.max.descendants").read_text().strip() == str(MAX_DESCENDANTS)
    assert Path(unified, "cgroup.max.depth").read_text().strip() == str(MAX_DEPTH)
    res = run(
        d,
        "cb",
        f"cd /sys/fs/cgroup && i=0; while [ $i -lt {MAX_DEPTH + 1} ]; do "
        "mkdir a && cd a || break; i=$((i+1)); done; echo made=$i",
    )
    assert f"made={MAX_DEPTH}" in res.stdout, res.stdout
    assert "Resource temporarily unavailable" in res.stdout, res.stdout
