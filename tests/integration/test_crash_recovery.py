"""lxpyd killed at every step boundary of every multi-step operation.

For each (operation, step) of lxpy.daemon.crashpoint.STEPS, lxpyd is started
with LXPY_CRASH_AT=OP:STEP, the operation is run with the real `lxpy`
command, lxpyd SIGKILLs itself right after that step, and a new lxpyd is
started on the same root. Then: it answers; what the operation was about
(container, snapshot, template, image, network) is fully there or fully
gone; its name is usable again; no intent, hidden volume, mount, loop
device, cgroup, veth, netns, nft rule, dnsmasq, lxpyd helper process or
image download is left; and the container that ran through all of it was
adopted with the same init pid.

One root, pool, network and running container serve every case (module
fixture); each case leaves them as it found them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lxpy.daemon.crashpoint import CRASH_ENV, STEPS
from lxpy.kernel.cgroups import PREFIX, hierarchies
from lxpy.model.network import root_id, veth_name
from lxpy.model.paths import HIDDEN, PoolPaths, RootPaths, RunPaths, hidden_prefixes
from lxpy.model.settings import Settings
from lxpy.network import links, nftables
from tests import conftest
from tests.conftest import Daemon, info, start_daemon, stop_daemon, wait_for
from tests.integration.test_network import IP, NFT, bridge_exists, free_subnet, net_name, scrub
from tests.simplestreams import Product, Server, build_tree, host_arch, rootfs_tarball

pytestmark = pytest.mark.integration

# Every case ends within this many seconds (tests/conftest.py).
TIME_BOUND = 300

CASES = [f"{op}:{step}" for op, steps in STEPS.items() for step in steps]


@dataclass
class Site:
    tmp: Path
    root: Path
    socket: Path
    log: Path
    net: str
    keep_pid: int
    d: Daemon
    # The URL of a local image server (image-pull cases).
    mirror: str = ""
    # What a quiet root holds: mounts and loop devices under tmp, cgroups.
    mounts: set[str] = field(default_factory=set)
    loops: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)

    @property
    def paths(self) -> RootPaths:
        return RootPaths(self.root)

    @property
    def run(self) -> RunPaths:
        return RunPaths.of(self.root)

    @property
    def pool(self) -> PoolPaths:
        return self.paths.pool

    def start(self, crash_at: str | None = None) -> Daemon:
        conf = self.root.parent / f"{self.root.name}-lxpyd.toml"
        prefix = ("env", f"{CRASH_ENV}={crash_at}") if crash_at else ()
        self.d = start_daemon(
            self.root, self.socket, self.log, "--config", str(conf), prefix=prefix
        )
        return self.d


def _mounts(under: Path) -> set[str]:
    target = str(under.resolve())
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return {p for line in lines if (p := line.split()[1]).startswith(target + "/")}


def _loops(under: Path) -> set[str]:
    out = subprocess.run(["losetup", "-J"], capture_output=True, text=True).stdout
    devs = json.loads(out or "{}").get("loopdevices", [])
    return {d["name"] for d in devs if str(d.get("back-file", "")).startswith(str(under))}


def _cgroups(root: Path) -> set[str]:
    # The host's hierarchies only: other tests mount some of their own.
    parent = Settings(root=root).cgroup_parent
    return {
        f"{h.mountpoint}:{c.name}"
        for h in hierarchies()
        if h.mountpoint.startswith("/sys/fs/cgroup")
        for c in Path(h.mountpoint, parent).glob(PREFIX + "*")
    }


def _helpers(root: Path, daemon_pid: int) -> list[int]:
    # lxpyd and whatever it forked carry its command line (--root ROOT).
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == daemon_pid:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"lxpyd" in a for a in cmd) and str(root).encode() in cmd:
            found.append(int(p.name))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("crash")
    root = tmp / "root"
    root.mkdir()
    settings = (
        f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\nlxcfs = "off"\n'
    )
    d = start_daemon(root, tmp / "lxpy.sock", tmp / "lxpyd.log", settings=settings)
    net = net_name()
    # Each case starts daemons of its own: the last one is stopped here.
    s = Site(tmp, root, d.socket, tmp / "lxpyd.log", net, 0, d)
    try:
        d.cli("network", "create", net, "--subnet", free_subnet(), "--no-nat")
        d.cli("template", "build", "busybox")
        d.cli("create", "keep", "-t", "busybox", "--set", f"network={net}")
        d.cli("start", "keep")
        s.keep_pid = info(d, "keep")["init_pid"]
        s.mounts, s.loops, s.cgroups = _mounts(tmp), _loops(tmp), _cgroups(root)
        yield s
    finally:
        stop_daemon(s.d)
        conftest.stop_containers(root)
        scrub(root)
        conftest.forget_host_ids(root)
        conftest.unmount_all_under(tmp)


# -- the operations: (prepare, act, settle) per operation ----------------------
# prepare runs on the crashing daemon before the operation; act is the
# operation (it fails: lxpyd dies); settle runs on the next daemon, checks
# "fully there or fully gone" and removes what the case made.


def _names(d: Daemon) -> set[str]:
    return {c["name"] for c in json.loads(d.cli("list", "--format", "json").stdout)}


def _snaps(d: Daemon, name: str) -> list[str]:
    out = d.cli("snapshot", "list", name, "--format", "json").stdout
    return [s["name"] for s in json.loads(out)]


def _whole_or_gone(s: Site, name: str) -> bool:
    """Container `name` is listed with its record and volume, or none of
    the three is there; then the name is usable again. Returns whether it
    is there."""
    there = name in _names(s.d)
    assert s.paths.record(name).exists() == there
    assert s.pool.container(name).is_dir() == there
    if not there:
        assert not s.pool.snapshot_dir(name).exists()
        assert not s.paths.console_log(name).exists()
        s.d.cli("create", name, "-t", "busybox")
    assert info(s.d, name)["state"] == "STOPPED"
    return there


def _destroy(s: Site, *names: str) -> None:
    for n in names:
        if n in _names(s.d):
            s.d.cli("destroy", n, "--force")


def _prep_one(s: Site) -> None:
    s.d.cli("create", "c1", "-t", "busybox")


def _settle_created(s: Site) -> None:
    _whole_or_gone(s, "c1")
    _destroy(s, "c1", "src")


def _prep_src(s: Site) -> None:
    s.d.cli("create", "src", "-t", "busybox")
    s.d.cli("snapshot", "create", "src", "s0")


def _prep_backup(s: Site) -> None:
    _prep_src(s)
    s.d.cli("export", "-q", "src", str(s.tmp / "src.tar.zst"))


def _settle_rename(s: Site) -> None:
    names = _names(s.d)
    assert ("src" in names) != ("c1" in names), names
    now = "src" if "src" in names else "c1"
    assert _snaps(s.d, now) == ["s0"]
    assert s.pool.snapshot(now, "s0").is_dir()
    other = "c1" if now == "src" else "src"
    assert not s.pool.container(other).exists()
    assert not s.pool.snapshot_dir(other).exists()
    _whole_or_gone(s, other)
    _destroy(s, "src", "c1")


def _prep_running(s: Site) -> None:
    s.d.cli("create", "c1", "-t", "busybox", "--set", f"network={s.net}")
    s.d.cli("snapshot", "create", "c1", "s0")
    s.d.cli("start", "c1")


def _settle_deleted(s: Site) -> None:
    if _whole_or_gone(s, "c1"):
        assert _snaps(s.d, "c1") == ["s0"]
    _destroy(s, "c1")


def _prep_snapped(s: Site) -> None:
    _prep_one(s)
    s.d.cli("snapshot", "create", "c1", "s1")


def _settle_snapshot(s: Site) -> None:
    snaps = _snaps(s.d, "c1")
    assert snaps in ([], ["s1"])
    assert s.pool.snapshot("c1", "s1").is_dir() == bool(snaps)
    # The name is usable either way.
    if snaps:
        s.d.cli("snapshot", "delete", "c1", "s1")
    s.d.cli("snapshot", "create", "c1", "s1")
    _destroy(s, "c1")


def _prep_restore(s: Site) -> None:
    _prep_one(s)
    (s.pool.container("c1") / "marker").write_text("before")
    s.d.cli("snapshot", "create", "c1", "s1")
    (s.pool.container("c1") / "marker").write_text("after")


def _settle_restore(s: Site) -> None:
    assert (s.pool.container("c1") / "marker").read_text() in ("before", "after")
    assert _snaps(s.d, "c1") == ["s1"]
    s.d.cli("snapshot", "restore", "c1", "s1")
    assert (s.pool.container("c1") / "marker").read_text() == "before"
    _destroy(s, "c1")


def _settle_template(s: Site) -> None:
    listed = json.loads(s.d.cli("template", "list", "--format", "json").stdout)
    t = next(t for t in listed if t["name"] == "busybox")
    assert t["built"] and not t["stale"], t
    s.d.cli("create", "c1", "-t", "busybox")
    _destroy(s, "c1")


def _prep_network(s: Site) -> None:
    s.d.cli("network", "create", "n2" + s.net[3:], "--subnet", free_subnet(), "--no-nat")


def _settle_network(s: Site) -> None:
    n2 = "n2" + s.net[3:]
    listed = {n["name"] for n in json.loads(s.d.cli("network", "list", "--format", "json").stdout)}
    there = n2 in listed
    assert bridge_exists(n2) == there
    assert s.paths.network_record(n2).exists() == there
    assert (s.run.network(n2) / "dnsmasq.pid").exists() == there
    assert (f'"{n2}"' in _table(s, "inet")) == there
    # Its name is usable either way.
    if there:
        s.d.cli("network", "delete", n2)
    _prep_network(s)
    s.d.cli("network", "delete", n2)


def _share(s: Site) -> Path:
    share = s.tmp / "share"
    share.mkdir(exist_ok=True)
    (share / "f").write_text("shared")
    return share


def _device_args(s: Site) -> list[str]:
    return ["c1", "www", "disk", f"source={_share(s)}", "path=/srv/www"]


def _prep_device_add(s: Site) -> None:
    s.d.cli("create", "c1", "-t", "busybox")
    s.d.cli("start", "c1")


def _prep_device_remove(s: Site) -> None:
    _prep_device_add(s)
    s.d.cli("device", "add", *_device_args(s))


def _settle_device(s: Site) -> None:
    # In the record and mounted in the running container, or neither.
    ct = info(s.d, "c1")
    assert ct["state"] == "RUNNING"
    mounts = Path(f"/proc/{ct['init_pid']}/mountinfo").read_text()
    there = "www" in ct["devices"]
    assert (" /srv/www " in mounts) == there, mounts
    listed = json.loads(s.d.cli("device", "list", "c1", "--format", "json").stdout)
    assert [(d["name"], d["active"]) for d in listed] == ([("www", True)] if there else [])
    # The name is usable either way.
    if there:
        s.d.cli("device", "remove", "c1", "www")
    s.d.cli("device", "add", *_device_args(s))
    assert s.d.cli("exec", "c1", "--", "cat", "/srv/www/f").stdout == "shared"
    _destroy(s, "c1")


def _images(s: Site) -> list[dict[str, object]]:
    return list(json.loads(s.d.cli("image", "list", "--format", "json").stdout))


def _image_whole_or_gone(s: Site, alias: str | None) -> None:
    """The image is listed with its read-only volume, or neither is there;
    no verified download is left either way. Then it is deleted."""
    images = _images(s)
    vols = sorted(p.name[1:] for p in s.pool.templates.glob("@*"))
    assert sorted(str(i["fingerprint"]) for i in images) == vols, (images, vols)
    assert [p for p in s.paths.downloads.iterdir()] == []
    for img in images:
        if alias is not None:
            assert img["aliases"] == [alias]
        s.d.cli("create", "img1", "--image", str(img["fingerprint"]))
        _destroy(s, "img1")
        s.d.cli("image", "delete", str(img["fingerprint"]))


def _prep_pull(s: Site) -> None:
    remotes = json.loads(s.d.cli("remote", "list", "--format", "json").stdout)
    if "crash" not in [r["name"] for r in remotes]:
        s.d.cli("remote", "add", "crash", s.mirror)


def _settle_pull(s: Site) -> None:
    _image_whole_or_gone(s, None)
    # Pulled again (or the first time): it works.
    s.d.cli("image", "pull", "crash:busybox/1.36")
    _image_whole_or_gone(s, None)


def _settle_publish(s: Site) -> None:
    _image_whole_or_gone(s, "pub")
    s.d.cli("publish", "c1", "--alias", "pub")
    _image_whole_or_gone(s, "pub")
    _destroy(s, "c1")


OPS: dict[str, tuple[Callable[[Site], None] | None, list[str], Callable[[Site], None]]] = {
    "create": (None, ["create", "c1", "-t", "busybox"], _settle_created),
    "copy": (_prep_src, ["copy", "src", "c1"], _settle_created),
    "import": (_prep_backup, [], _settle_created),
    "rename": (_prep_src, ["rename", "src", "c1"], _settle_rename),
    "delete": (_prep_running, ["destroy", "c1", "--force"], _settle_deleted),
    "snapshot": (_prep_one, ["snapshot", "create", "c1", "s1"], _settle_snapshot),
    "snapshot-delete": (_prep_snapped, ["snapshot", "delete", "c1", "s1"], _settle_snapshot),
    "restore": (_prep_restore, ["snapshot", "restore", "c1", "s1"], _settle_restore),
    "template-build": (None, ["template", "build", "busybox", "--force"], _settle_template),
    "image-pull": (_prep_pull, ["image", "pull", "crash:busybox/1.36"], _settle_pull),
    "image-publish": (_prep_one, ["publish", "c1", "--alias", "pub"], _settle_publish),
    "network-create": (None, [], _settle_network),
    "network-delete": (_prep_network, [], _settle_network),
    "device-add": (_prep_device_add, [], _settle_device),
    "device-remove": (_prep_device_remove, ["device", "remove", "c1", "www"], _settle_device),
}


def _act(s: Site, op: str) -> subprocess.CompletedProcess[str]:
    n2 = "n2" + s.net[3:]
    if op == "network-create":
        return s.d.cli("network", "create", n2, "--subnet", free_subnet(), check=False)
    if op == "network-delete":
        return s.d.cli("network", "delete", n2, check=False)
    if op == "import":
        return s.d.cli("import", "-q", str(s.tmp / "src.tar.zst"), "c1", check=False)
    if op == "device-add":
        return s.d.cli("device", "add", *_device_args(s), check=False)
    return s.d.cli(*OPS[op][1], check=False)


def _table(s: Site, family: str) -> str:
    table = nftables.table_name(root_id(str(s.root)))
    res = subprocess.run([NFT, "list", "table", family, table], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def _assert_nothing_left(s: Site) -> None:
    assert list(s.paths.intents.glob("*")) == []
    assert list(s.paths.spool.glob("*")) == []
    for pattern in ("templates/.*", "containers/.*", "snapshots/.*", "snapshots/*/.*"):
        assert [
            p for p in s.pool.path.glob(pattern) if p.name.startswith(hidden_prefixes(*HIDDEN))
        ] == []
    assert _mounts(s.tmp) == s.mounts
    assert _loops(s.tmp) == s.loops
    assert _cgroups(s.root) == s.cgroups
    assert sorted(p.name for p in s.run.netns_dir.iterdir()) == ["keep"]
    ours = {veth_name(str(s.root), "keep", 0)}
    out = subprocess.run(
        [IP, "-j", "link", "show", "master", s.net], capture_output=True, text=True
    )
    assert {link["ifname"] for link in json.loads(out.stdout or "[]")} == ours
    for c in ("c1", "src"):
        assert not links.existing_links([veth_name(str(s.root), c, 0)])
        assert veth_name(str(s.root), c, 0) not in _table(s, "bridge")
    assert _helpers(s.root, s.d.proc.pid) == []
    dnsmasqs = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(s.run.dir).encode() in _cmdline(p) and b"dnsmasq" in _cmdline(p)
    ]
    assert len(dnsmasqs) == len(json.loads(s.d.cli("network", "list", "--format", "json").stdout))


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def mirror(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simplestreams tree with the busybox template's rootfs, served on loopback."""
    tmp = tmp_path_factory.mktemp("mirror")
    tar = tmp / "root.tar.xz"
    rootfs_tarball(site.pool.template("busybox"), tar)
    product = Product("busybox", "1.36", host_arch(), "default", "20261201_00:00", tar)
    build_tree(tmp / "tree", [product])
    with Server(tmp / "tree") as server:
        yield server.url


@pytest.mark.parametrize("case", CASES)
def test_crash_at(site: Site, case: str, request: pytest.FixtureRequest) -> None:
    s = site
    op, _, step = case.partition(":")
    if op == "image-pull":
        s.mirror = request.getfixturevalue("mirror")
    prepare, _, settle = OPS[op]
    stop_daemon(s.d)
    d = s.start(crash_at=case)
    if prepare is not None:
        prepare(s)
    res = _act(s, op)
    # It died right there, by its own SIGKILL, and the command saw it.
    assert d.proc.wait(timeout=60) == -9, (res.stdout, res.stderr)
    assert res.returncode != 0
    d = s.start()
    wait_for(lambda: d.cli("list", check=False).returncode == 0, 30, "lxpyd to answer")
    keep = info(d, "keep")
    assert (keep["state"], keep["init_pid"]) == ("RUNNING", s.keep_pid)
    settle(s)
    _assert_nothing_left(s)
