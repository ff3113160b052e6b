"""Images end to end: a real lxpyd against a local simplestreams server.

Each test makes rootfs tarballs (the busybox template's rootfs, hostile
ones, one without an init), builds a real-format simplestreams tree from
them (tests/simplestreams.py), serves it on 127.0.0.1 from a thread of
the test, and drives the real `lxpy` command: remotes, listing, create
from a remote image, the cache reused (requests counted at the server),
damaged, interrupted and foreign images refused with nothing left, and
publish then create.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import btrfsutil
import pytest

from lxpy.api.client import Client
from lxpy.model.paths import PoolPaths
from tests.conftest import (
    VENV_BIN,
    Daemon,
    info,
    start_again,
    stop_daemon,
    wait_for,
)
from tests.integration.test_boot import nsenter, system_state
from tests.integration.test_cli import cli_json, storage_dir
from tests.simplestreams import Product, Server, build_tree, host_arch, rootfs_tarball

pytestmark = pytest.mark.integration

ARCH = host_arch()
OTHER_ARCH = "arm64" if ARCH != "arm64" else "amd64"


@pytest.fixture
def busybox_tar(daemon: Daemon, tmp_path: Path) -> Path:
    """root.tar.xz of the busybox template's rootfs, built by `daemon`."""
    daemon.cli("template", "build", "busybox")
    out = tmp_path / "busybox-root.tar.xz"
    rootfs_tarball(storage_dir(daemon).template("busybox"), out)
    return out


def serve(tmp_path: Path, name: str, products: list[Product]) -> tuple[Server, dict[str, str]]:
    top = tmp_path / "mirror" / name
    fps = build_tree(top, products)
    return Server(top), fps


def bb(root: Path, **kw: Any) -> Product:
    fields: dict[str, Any] = {
        "os": "busybox",
        "release": "1.36",
        "arch": ARCH,
        "variant": "default",
        "version": "20261201_00:00",
        "root": root,
        **kw,
    }
    return Product(**fields)


@pytest.fixture
def mirror(daemon: Daemon, tmp_path: Path, busybox_tar: Path) -> Iterator[tuple[Server, str]]:
    """A served tree with busybox for this host (two versions) and one
    for another architecture, added as remote `local`; the newest
    fingerprint."""
    server, fps = serve(
        tmp_path,
        "good",
        [
            bb(busybox_tar, version="20261101_00:00"),
            bb(busybox_tar, version="20261201_00:00", variant="default"),
            bb(busybox_tar, arch=OTHER_ARCH, meta_arch="aarch64"),
        ],
    )
    with server:
        daemon.cli("remote", "add", "local", server.url + "/", "--protocol", "simplestreams")
        yield server, fps[f"busybox:1.36:{ARCH}:default"]


def fails(d: Daemon, *args: str) -> str:
    """Run a command that must be refused: exit 1, `error:` (after any
    progress lines of a download), no traceback; the error and its hint."""
    res = d.cli(*args, check=False)
    assert res.returncode == 1, f"lxpy {args}: {res.returncode}\n{res.stdout}{res.stderr}"
    assert "Traceback" not in res.stderr
    at = res.stderr.find("error: ")
    assert at == 0 or (at > 0 and res.stderr[at - 1] == "\n"), res.stderr
    return res.stderr[at:]


def booted(d: Daemon, name: str) -> None:
    """Wait until busybox init in `name` has run its getty (and so handles
    the halt signal: a pid namespace's init ignores signals it has no
    handler for yet)."""
    wait_for(lambda: "login" in d.cli("console", name, "--log").stdout, 60, f"{name} to boot")


def pool(d: Daemon) -> PoolPaths:
    return storage_dir(d)


def leftovers(d: Daemon) -> list[str]:
    """Image volumes, staging volumes and downloads: what a failed pull must not leave."""
    base = pool(d).templates
    found = [p.name for p in base.iterdir() if p.name.startswith(("@", ".build-", ".old-"))]
    found += [f"downloads/{p.name}" for p in d.paths.downloads.iterdir()]
    found += [f"meta/{p.name}" for p in d.paths.images.glob("*.json")]
    found += [f"intent/{p.name}" for p in d.paths.intents.glob("*")]
    return found


# -- remotes ---------------------------------------------------------------------------


def test_remotes_add_list_remove(daemon: Daemon) -> None:
    d = daemon
    assert cli_json(d, "remote", "list") == [
        {"name": "images", "url": "https://images.linuxcontainers.org", "protocol": "simplestreams"}
    ]
    rows = d.cli("remote", "list").stdout.splitlines()
    assert rows[0].split() == ["NAME", "URL", "PROTOCOL"]
    d.cli("remote", "add", "mirror", "http://127.0.0.1:9/images/")
    names = {r["name"]: r["url"] for r in cli_json(d, "remote", "list")}
    assert names == {
        "images": "https://images.linuxcontainers.org",
        "mirror": "http://127.0.0.1:9/images",
    }
    assert "already exists" in fails(d, "remote", "add", "mirror", "http://127.0.0.1:9/x")
    assert "not an http:// or https:// URL" in fails(d, "remote", "add", "m2", "ftp://x/y")
    assert "invalid remote name" in fails(d, "remote", "add", "Bad_Name", "http://x/")
    # Unreachable: a clear error naming the URL, nothing cached.
    err = fails(d, "image", "list", "mirror:")
    assert "http://127.0.0.1:9/images/streams/v1/index.json" in err and "cannot download" in err
    d.cli("remote", "remove", "mirror")
    assert [r["name"] for r in cli_json(d, "remote", "list")] == ["images"]
    assert "not found" in fails(d, "remote", "remove", "mirror")
    # The remotes survive a restart of lxpyd (kept in its root).
    assert json.loads(d.paths.remotes.read_text()).keys() == {"images"}


# -- list, create, the cache -----------------------------------------------------------


def test_list_create_and_the_cache_reused(daemon: Daemon, mirror: tuple[Server, str]) -> None:
    d = daemon
    server, fp = mirror
    listed = cli_json(d, "image", "list", "local:")
    # The newest version of each product, both architectures listed.
    assert sorted((i["architecture"], i["version"]) for i in listed) == sorted(
        [(ARCH, "20261201_00:00"), (OTHER_ARCH, "20261201_00:00")]
    )
    mine = next(i for i in listed if i["architecture"] == ARCH)
    assert mine["fingerprint"] == fp
    assert set(mine["aliases"]) >= {"busybox/1.36", "busybox/1.36/default", f"busybox/1.36/{ARCH}"}
    assert mine["distribution"] == "Busybox" and mine["release"] == "1.36"
    table = d.cli("image", "list", "local:", f"architecture={ARCH}").stdout.splitlines()
    assert table[0].split() == [
        "ALIAS",
        "DISTRIBUTION",
        "RELEASE",
        "ARCH",
        "VARIANT",
        "DATE",
        "SIZE",
        "FINGERPRINT",
    ]
    assert len(table) == 2 and table[1].split()[0] == "busybox/1.36" and fp[:12] in table[1]
    assert cli_json(d, "image", "list", "local:", "no-such-thing") == []
    assert server.file_requests() == 0

    res = d.cli("create", "c1", "--image", "local:busybox/1.36")
    assert res.stdout == "created c1 from image local:busybox/1.36\n"
    # Each file once, verified, and the downloads gone once unpacked.
    assert server.file_requests() == 2
    assert list(d.paths.downloads.iterdir()) == []
    [img] = cli_json(d, "image", "list")
    assert img["fingerprint"] == fp and img["architecture"] == ARCH
    assert img["source"] == {"remote": "local", "url": server.url, "alias": "busybox/1.36"}
    # Cached as a read-only subvolume; the container is a snapshot of it.
    vol = pool(d).image(fp)
    assert btrfsutil.is_subvolume(vol) and btrfsutil.get_subvolume_read_only(vol)
    ct = Path(info(d, "c1")["path"])
    assert btrfsutil.subvolume_info(ct).parent_uuid == btrfsutil.subvolume_info(vol).uuid
    assert (ct / "etc" / "machine-id").read_text() == ""
    row = next(r for r in d.cli("list").stdout.splitlines() if r.startswith("c1 "))
    assert row.split()[3:5] == ["image", fp[:12]]
    assert re.search(rf"^template:\s+image {fp}$", d.cli("info", "c1").stdout, re.M)
    assert not any((ct / "dev").iterdir())

    # A second create: no download, the same image (also by its arch alias).
    d.cli("create", "c2", "--image", f"local:busybox/1.36/{ARCH}")
    d.cli("create", "c3", "--image", fp[:12])
    assert server.file_requests() == 2
    for name in ("c2", "c3"):
        path = Path(info(d, name)["path"])
        assert btrfsutil.subvolume_info(path).parent_uuid == btrfsutil.subvolume_info(vol).uuid
    res = d.cli("image", "pull", "local:busybox/1.36")
    assert res.stdout == "image local:busybox/1.36 is cached already\n"
    assert server.file_requests() == 2

    # It boots: busybox init, with the signals busybox init takes (kept
    # in its config: they hold after the image is gone).
    assert info(d, "c2")["config"]["halt_signal"] == "SIGUSR2"
    d.cli("start", "c2")
    pid = info(d, "c2")["init_pid"]
    assert nsenter(pid, "cat", "/etc/hostname").stdout.strip() == "c2"
    booted(d, "c2")
    d.cli("stop", "c2", "--timeout", "20")
    assert info(d, "c2")["last_exit"]["detail"] == "stopped by lxpy"

    # Delete: the containers keep their rootfs, the image is gone.
    d.cli("image", "delete", fp[:12])
    assert cli_json(d, "image", "list") == [] and not vol.exists()
    assert (Path(info(d, "c1")["path"]) / "bin" / "busybox").exists()
    assert "not found" in fails(d, "image", "delete", fp[:12])
    d.cli("start", "c2")
    booted(d, "c2")
    d.cli("stop", "c2", "--timeout", "20")
    assert info(d, "c2")["last_exit"]["detail"] == "stopped by lxpy"
    assert "not found" in fails(d, "create", "c4", "--image", "no-such-alias")
    err = fails(d, "create", "c4", "--image", "local:busybox/9.99")
    assert "image local:busybox/9.99 not found" in err
    res = d.cli("create", "c4", check=False)
    assert res.returncode == 2 and "give one of --template and --image" in res.stderr
    assert {c["name"] for c in cli_json(d, "list")} == {"c1", "c2", "c3"}


def test_a_damaged_download_is_refused_with_nothing_left(
    daemon: Daemon, tmp_path: Path, busybox_tar: Path
) -> None:
    d = daemon
    server, _ = serve(tmp_path, "bad", [bb(busybox_tar, bad_sha=True)])
    with server:
        d.cli("remote", "add", "bad", server.url)
        err = fails(d, "create", "c1", "--image", "bad:busybox/1.36")
        assert "the download is damaged" in err and "nothing was kept" in err
        assert leftovers(d) == []
        assert cli_json(d, "image", "list") == [] and cli_json(d, "list") == []
        # Again: downloaded afresh, refused again (nothing damaged was kept).
        before = server.requests["/" + _root_path(server)]
        fails(d, "image", "pull", "bad:busybox/1.36")
        assert server.requests["/" + _root_path(server)] == before + 1
        assert leftovers(d) == []


def _root_path(server: Server) -> str:
    return next(
        str(p.relative_to(server.top)) for p in server.top.rglob("root.tar.xz") if p.is_file()
    )


def test_an_interrupted_download_resumes(daemon: Daemon, mirror: tuple[Server, str]) -> None:
    d = daemon
    server, fp = mirror
    path = "/" + next(
        str(p.relative_to(server.top))
        for p in server.top.rglob("root.tar.xz")
        if f"/{ARCH}/default/20261201" in str(p)
    )
    size = (server.top / path.lstrip("/")).stat().st_size
    server.cut[path] = size // 2
    err = fails(d, "image", "pull", "local:busybox/1.36")
    assert "broke off" in err and "kept" in err
    # The part is kept, no image, no staging volume.
    parts = list(d.paths.downloads.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == size // 2
    assert cli_json(d, "image", "list") == []
    assert not [p for p in pool(d).templates.iterdir() if p.name.startswith((".", "@"))]
    # The retry asks for the rest only, and the image is whole.
    d.cli("image", "pull", "local:busybox/1.36")
    assert (path, f"bytes={size // 2}-") in server.ranges
    assert [i["fingerprint"] for i in cli_json(d, "image", "list")] == [fp]
    assert list(d.paths.downloads.iterdir()) == []
    d.cli("create", "c1", "--image", "local:busybox/1.36")
    assert (Path(info(d, "c1")["path"]) / "bin" / "busybox").exists()


def test_ctrl_c_cancels_the_pull_and_the_next_one_resumes(
    daemon: Daemon, mirror: tuple[Server, str]
) -> None:
    d = daemon
    server, fp = mirror
    server.pause = 0.2
    downloads = d.paths.downloads

    def some_bytes() -> bool:
        return any(p.stat().st_size > 0 for p in downloads.glob("*.part"))

    proc = subprocess.Popen(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "image", "pull", "local:busybox/1.36"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(some_bytes, 60, "the download to begin")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; cancelled the download of local:busybox/1.36" in err
    # Cancelled in the daemon too (once the chunk being read has come).
    client = Client(str(d.socket))

    def pulls() -> list[str]:
        return [o["status"] for o in client.operations() if o["kind"] == "image-pull"]

    wait_for(lambda: pulls() != ["running"], 30, "the pull to end")
    assert pulls() == ["cancelled"]
    [part] = downloads.glob("*.part")
    kept = part.stat().st_size
    assert kept > 0 and cli_json(d, "image", "list") == []
    assert not [p for p in pool(d).templates.iterdir() if p.name.startswith((".", "@"))]
    # Resumed from where it stopped, then whole and verified.
    server.pause = 0.0
    d.cli("image", "pull", "local:busybox/1.36")
    assert any(r.startswith("bytes=") and int(r[6:-1]) >= kept for _, r in server.ranges)
    assert [i["fingerprint"] for i in cli_json(d, "image", "list")] == [fp]
    assert list(downloads.iterdir()) == []


def test_a_restart_keeps_partial_downloads_only(daemon: Daemon, tmp_path: Path) -> None:
    # What a crash between a download and its pull's intent leaves: a
    # verified file no pull will use (removed at start) and a part that
    # the next pull resumes (kept).
    d = daemon
    downloads = d.paths.downloads
    stop_daemon(d)
    (downloads / ("1" * 64)).write_bytes(b"verified")
    (downloads / ("2" * 64 + ".part")).write_bytes(b"half")
    d2 = start_again(d, tmp_path / "lxpyd2.log")
    try:
        assert d2.cli("image", "list", "--format", "json").stdout.strip() == "[]"
        assert sorted(p.name for p in downloads.iterdir()) == ["2" * 64 + ".part"]
    finally:
        stop_daemon(d2)


def test_a_foreign_architecture_is_refused(daemon: Daemon, mirror: tuple[Server, str]) -> None:
    d = daemon
    server, _ = mirror
    err = fails(d, "create", "c1", "--image", f"local:busybox/1.36/{OTHER_ARCH}")
    assert f"is for {OTHER_ARCH}; this host is {ARCH}" in err
    assert server.file_requests() == 0
    assert leftovers(d) == [] and cli_json(d, "list") == []


def test_metadata_of_another_architecture_is_refused(
    daemon: Daemon, tmp_path: Path, busybox_tar: Path
) -> None:
    # The products file says this host's architecture, the image's own
    # metadata says another: the metadata wins, nothing is unpacked.
    d = daemon
    server, _ = serve(tmp_path, "liar", [bb(busybox_tar, meta_arch="aarch64")])
    with server:
        d.cli("remote", "add", "liar", server.url)
        err = fails(d, "image", "pull", "liar:busybox/1.36")
        assert "is for arm64; this host is" in err
        assert leftovers(d) == []


def _hostile(path: Path, members: list[tuple[str, Any]]) -> None:
    with tarfile.open(path, "w:xz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(kind, tuple) and kind[0] == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, kind[1]
                tar.addfile(info)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                tar.addfile(info)
            else:
                data = str(kind).encode()
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))


def test_hostile_and_initless_images_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    target = tmp_path / "escaped"
    cases: dict[str, tuple[list[tuple[str, Any]], str]] = {
        "dotdot": ([("sbin", "dir"), ("sbin/init", "#!/bin/sh\n"), ("../escaped", "x")], "'..'"),
        "absolute": ([("sbin/init", "x"), (str(target), "x")], "absolute path"),
        "through-symlink": (
            [("sbin/init", "x"), ("etc2", ("sym", str(tmp_path))), ("etc2/escaped", "x")],
            "goes through the symlink etc2/",
        ),
        "device": ([("sbin/init", "x"), ("null2", "chr")], "device node outside /dev"),
        "no-init": ([("etc", "dir"), ("etc/hostname", "x\n")], "its init /sbin/init"),
    }
    products = []
    for name, (members, _) in cases.items():
        tar = tmp_path / f"{name}.tar.xz"
        _hostile(tar, members)
        products.append(bb(tar, os=name, aliases=[name]))
    server, _ = serve(tmp_path, "hostile", products)
    with server:
        d.cli("remote", "add", "hostile", server.url)
        for name, (_, why) in cases.items():
            err = fails(d, "create", "c1", "--image", f"hostile:{name}")
            assert why in err, (name, err)
            assert leftovers(d) == [], name
    assert not target.exists()
    assert not (tmp_path / "escaped").exists()
    assert cli_json(d, "list") == [] and cli_json(d, "image", "list") == []


# -- publish ---------------------------------------------------------------------------


def test_publish_then_create(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "busybox")
    d.cli("create", "web", "-t", "busybox")
    root = Path(info(d, "web")["path"])
    (root / "etc" / "machine-id").unlink()
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc" / "ssh").mkdir()
    for k in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"):
        (root / "etc" / "ssh" / k).write_text(k)
    (root / "srv-marker").write_text("configured")

    d.cli("start", "web")
    err = fails(d, "publish", "web", "--alias", "web-base")
    assert "stop it first" in err and cli_json(d, "image", "list") == []
    booted(d, "web")
    d.cli("stop", "web", "--timeout", "20")

    res = d.cli("publish", "web", "--alias", "web-base", "--description", "my base")
    assert res.stdout.startswith("published web as image ") and "(web-base)" in res.stdout
    [img] = cli_json(d, "image", "list")
    assert img["aliases"] == ["web-base"] and img["description"] == "my base"
    assert img["published_from"] == {"container": "web", "snapshot": None}
    vol = pool(d).image(img["fingerprint"])
    assert btrfsutil.get_subvolume_read_only(vol)
    # The machine identity is reset in the image; the container keeps its own.
    assert (vol / "etc" / "machine-id").read_text() == ""
    assert sorted(os.listdir(vol / "etc" / "ssh")) == ["sshd_config"]
    assert (root / "etc" / "machine-id").read_text().startswith("0123456789abcdef")
    assert "taken by image" in fails(d, "publish", "web", "--alias", "web-base")

    d.cli("create", "web2", "--image", "web-base")
    root2 = Path(info(d, "web2")["path"])
    assert (root2 / "srv-marker").read_text() == "configured"
    assert (root2 / "etc" / "machine-id").read_text() == ""
    assert not (root2 / "etc" / "ssh" / "ssh_host_ed25519_key").exists()
    assert stat.S_IMODE((root2 / "etc" / "machine-id").stat().st_mode) == 0o444
    d.cli("start", "web2")
    pid = info(d, "web2")["init_pid"]
    assert nsenter(pid, "cat", "/srv-marker").stdout == "configured"
    # The template's init defaults come with it: a clean stop.
    booted(d, "web2")
    d.cli("stop", "web2", "--timeout", "20")
    assert info(d, "web2")["last_exit"]["detail"] == "stopped by lxpy"

    # A snapshot publishes as it was, while the container runs.
    d.cli("snapshot", "create", "web", "s1")
    (root / "srv-marker").write_text("changed after s1")
    d.cli("start", "web")
    d.cli("publish", "web/s1", "--alias", "web-s1")
    d.cli("create", "web3", "--image", "web-s1")
    assert (Path(info(d, "web3")["path"]) / "srv-marker").read_text() == "configured"
    assert "no snapshot 'nope'" in fails(d, "publish", "web/nope", "--alias", "x")
    assert "not found" in fails(d, "publish", "nosuch", "--alias", "x")

    # Aliases: add, use, remove.
    d.cli("image", "alias", "web-base", "base2")
    shown = json.loads(d.cli("image", "show", "base2").stdout)
    assert shown["aliases"] == ["web-base", "base2"]
    d.cli("image", "alias", "web-base", "base2", "--remove")
    assert "not found" in fails(d, "image", "show", "base2")
    d.cli("image", "delete", "web-base", "web-s1")
    assert cli_json(d, "image", "list") == []
    assert (root2 / "srv-marker").read_text() == "configured"
    booted(d, "web")
    d.cli("stop", "web", "--timeout", "20")


def test_images_on_a_dir_pool(dir_daemon: Daemon, tmp_path: Path) -> None:
    # Without btrfs an image is a plain directory and a create copies it:
    # the same commands work.
    d = dir_daemon
    assert Client(str(d.socket)).server_info()["storage"]["backend"] == "dir"
    d.cli("create", "c1", "-t", "busybox", timeout=300)
    (Path(info(d, "c1")["path"]) / "marker").write_text("one")
    d.cli("publish", "c1", "--alias", "base")
    tar = tmp_path / "root.tar.xz"
    rootfs_tarball(pool(d).template("busybox"), tar)
    server, fps = serve(tmp_path, "dir", [bb(tar)])
    with server:
        d.cli("remote", "add", "local", server.url)
        d.cli("create", "c2", "--image", "local:busybox/1.36")
    d.cli("create", "c3", "--image", "base")
    assert (Path(info(d, "c3")["path"]) / "marker").read_text() == "one"
    assert (Path(info(d, "c2")["path"]) / "bin" / "busybox").exists()
    fps_now = sorted(i["fingerprint"] for i in cli_json(d, "image", "list"))
    assert fps[f"busybox:1.36:{ARCH}:default"] in fps_now and len(fps_now) == 2
    for fp in fps_now:
        d.cli("image", "delete", fp)
    assert not list(pool(d).templates.glob("@*"))
    assert (Path(info(d, "c3")["path"]) / "marker").read_text() == "one"


@pytest.mark.slow
def test_published_debian_gets_a_new_machine_id(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=1800)
    d.cli("create", "deb", "-t", "debian-bookworm")
    d.cli("start", "deb")
    pid = info(d, "deb")["init_pid"]
    assert system_state(pid) == "running"
    first = nsenter(pid, "cat", "/etc/machine-id").stdout.strip()
    assert len(first) == 32
    d.cli("stop", "deb")
    d.cli("publish", "deb", "--alias", "deb-base")
    d.cli("create", "deb2", "--image", "deb-base")
    d.cli("start", "deb2")
    pid2 = info(d, "deb2")["init_pid"]
    assert system_state(pid2) == "running"
    second = wait_for(
        lambda: nsenter(pid2, "cat", "/etc/machine-id").stdout.strip(), 30, "a machine-id"
    )
    assert len(second) == 32 and second != first
    d.cli("stop", "deb2")


@pytest.mark.slow
def test_debian_from_a_simplestreams_server_boots(daemon: Daemon, tmp_path: Path) -> None:
    # The Debian template's rootfs (restored from the suite's build cache)
    # served as a simplestreams image: a systemd system pulled, unpacked
    # and booted to `running` with a machine-id of its own.
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=1800)
    tar = tmp_path / "debian-root.tar.xz"
    subprocess.run(
        ["tar", "-C", str(pool(d).template("debian-bookworm")), "--numeric-owner"]
        + ["--xattrs", "--xattrs-include=*", "-cJf", str(tar), "."],
        check=True,
        env={**os.environ, "XZ_OPT": "-0 -T0"},
        timeout=900,
    )
    product = Product("debian", "12", ARCH, "default", "20261201_05:24", tar)
    server, fps = serve(tmp_path, "debian", [product])
    with server:
        d.cli("remote", "add", "deb", server.url)
        d.cli("create", "deb", "--image", "deb:debian/12", timeout=900)
    assert server.file_requests() == 2
    [img] = cli_json(d, "image", "list")
    assert img["fingerprint"] == fps[f"debian:12:{ARCH}:default"]
    root = Path(info(d, "deb")["path"])
    assert (root / "etc" / "debian_version").read_text().startswith("12")
    # Owners and file capabilities came through the tarball.
    assert (root / "usr" / "bin" / "passwd").stat().st_mode & stat.S_ISUID
    d.cli("start", "deb")
    pid = info(d, "deb")["init_pid"]
    assert system_state(pid) == "running"
    mid = nsenter(pid, "cat", "/etc/machine-id").stdout.strip()
    assert len(mid) == 32
    d.cli("stop", "deb")
    assert info(d, "deb")["last_exit"]["detail"] == "stopped by lxpy"
