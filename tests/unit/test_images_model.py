"""The simplestreams model, image names and the rootfs tarball checks (no root)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lxpy.build.imagefile import check_rootfs_tarball, parse_metadata
from lxpy.errors import InvalidArgument, NotFound, Unsupported
from lxpy.model import images as im

SHA = "a" * 64


def _item(ftype: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"ftype": ftype, "path": path, "sha256": SHA, "size": 10, **extra}


def _products(**over: Any) -> dict[str, Any]:
    versions = {
        v: {
            "items": {
                "lxd.tar.xz": _item(
                    "lxd.tar.xz",
                    f"images/a/{v}/lxd.tar.xz",
                    combined_rootxz_sha256=(c * 64),
                    combined_squashfs_sha256="f" * 64,
                ),
                "root.tar.xz": _item("root.tar.xz", f"images/a/{v}/root.tar.xz"),
                "rootfs.squashfs": _item("squashfs", f"images/a/{v}/rootfs.squashfs"),
            }
        }
        for v, c in (("20261101_00:00", "b"), ("20261201_00:00", "c"))
    }
    prods = {
        "alpine:3.20:amd64:default": {
            "aliases": "alpine/3.20/default,alpine/3.20",
            "arch": "amd64",
            "os": "Alpine",
            "release": "3.20",
            "variant": "default",
            "versions": versions,
        },
        "alpine:3.20:arm64:default": {
            "aliases": "alpine/3.20/default,alpine/3.20",
            "arch": "arm64",
            "os": "Alpine",
            "release": "3.20",
            "variant": "default",
            "versions": {"20261201_00:00": versions["20261201_00:00"]},
        },
        # A VM-only product: no container rootfs, left out.
        "alpine:3.20:amd64:vm": {
            "aliases": "alpine/3.20/vm",
            "arch": "amd64",
            "versions": {"1": {"items": {"disk.qcow2": _item("disk-kvm.img", "x/disk.qcow2")}}},
        },
    }
    prods.update(over)
    return {"format": "products:1.0", "products": prods}


def test_products_parse_to_images_with_incus_aliases() -> None:
    found = im.parse_products(_products(), "t")
    assert len(found) == 3
    newest = im.latest(found)
    assert [(i.arch, i.version) for i in newest] == [
        ("amd64", "20261201_00:00"),
        ("arm64", "20261201_00:00"),
    ]
    amd = newest[0]
    assert amd.fingerprint == "c" * 64 and amd.rootfs.ftype == "root.tar.xz"
    assert set(amd.aliases) == {
        "alpine/3.20",
        "alpine/3.20/default",
        "alpine/3.20/amd64",
        "alpine/3.20/default/amd64",
    }
    # squashfs is taken when it is all that is wanted, with its own fingerprint.
    sq = im.parse_products(_products(), "t", ("squashfs",))
    assert {i.fingerprint for i in sq} == {"f" * 64}


def test_resolve_picks_the_host_arch_and_refuses_another() -> None:
    found = im.parse_products(_products(), "t")
    assert im.resolve(found, "alpine/3.20", "r", "amd64").fingerprint == "c" * 64
    assert im.resolve(found, "alpine/3.20/amd64", "r", "amd64").arch == "amd64"
    assert im.resolve(found, "c" * 12, "r", "amd64").version == "20261201_00:00"
    with pytest.raises(Unsupported, match="is for arm64; this host is amd64"):
        im.resolve(found, "alpine/3.20/arm64", "r", "amd64")
    with pytest.raises(Unsupported, match="this host is riscv64"):
        im.resolve(found, "alpine/3.20", "r", "riscv64")
    with pytest.raises(NotFound, match="image r:alpine/3.21 not found") as e:
        im.resolve(found, "alpine/3.21", "r", "amd64")
    assert "alpine/3.20" in str(e.value.hint)


def test_bad_products_are_refused_with_where() -> None:
    with pytest.raises(InvalidArgument, match="not a simplestreams products file"):
        im.parse_products({"products": []}, "u")
    bad = _products()
    item = bad["products"]["alpine:3.20:amd64:default"]["versions"]["20261101_00:00"]["items"]
    item["root.tar.xz"]["path"] = "../../etc/shadow"
    with pytest.raises(InvalidArgument, match="must be relative to the server"):
        im.parse_products(bad, "u")
    item["root.tar.xz"]["path"] = "ok"
    item["root.tar.xz"]["sha256"] = "xyz"
    with pytest.raises(InvalidArgument, match="no valid sha256"):
        im.parse_products(bad, "u")
    with pytest.raises(InvalidArgument, match="no image-downloads"):
        im.products_path({"index": {"x": {"datatype": "other", "path": "p"}}}, "u")
    assert im.products_path(
        {"index": {"images": {"datatype": "image-downloads", "path": "streams/v1/images.json"}}},
        "u",
    ) == ("streams/v1/images.json")


def test_names_remotes_and_references() -> None:
    assert im.parse_image_ref("images:alpine/3.20") == im.ImageRef("images", "alpine/3.20")
    assert im.parse_image_ref("web-base") == im.ImageRef(None, "web-base")
    assert im.parse_image_ref("ab" * 6).name == "ab" * 6
    for bad in ("", "images:", "Bad_Remote:x", "images:../x", "a b"):
        with pytest.raises(InvalidArgument):
            im.parse_image_ref(bad)
    with pytest.raises(InvalidArgument, match="looks like a fingerprint"):
        im.validate_alias("a" * 64)
    r = im.validate_remote("mirror", "http://127.0.0.1:8000/x/")
    assert r.url == "http://127.0.0.1:8000/x" and r.protocol == "simplestreams"
    for url in ("ftp://h/x", "http://", "https://h/x?y=1", "file:///srv"):
        with pytest.raises(InvalidArgument):
            im.validate_remote("m", url)
    with pytest.raises(InvalidArgument, match="unknown remote protocol"):
        im.validate_remote("m", "https://h", "lxd")
    assert im.host_arch("x86_64") == "amd64" and im.host_arch("aarch64") == "arm64"


def test_filters_match_columns_and_alias_text() -> None:
    [amd, arm] = im.latest(im.parse_products(_products(), "t"))
    assert im.matches(amd, ["architecture=amd64", "alpine"])
    assert not im.matches(arm, ["architecture=amd64"])
    assert not im.matches(amd, ["debian"])


def test_metadata_yaml_scalars() -> None:
    fields = parse_metadata(
        "architecture: x86_64\ncreation_date: 1733500000\nproperties:\n"
        '  description: "Alpine 3.20"\n  os: alpine\ntemplates:\n  /etc/hostname:\n'
        "    when:\n      - create\n"
    )
    assert fields["architecture"] == "x86_64"
    assert fields["properties.description"] == "Alpine 3.20"
    assert "templates./etc/hostname" not in fields


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.linkname = link
    t.size = 1 if kind == tarfile.REGTYPE else 0
    return t


def test_rootfs_tarball_checks(tmp_path: Path) -> None:
    ok = _tar(
        tmp_path / "ok.tar",
        [
            _entry("./"),
            _entry("./bin", tarfile.SYMTYPE, "usr/bin"),
            _entry("./usr/bin/sh"),
            _entry("./etc/alt", tarfile.SYMTYPE, "/etc/alternatives/x"),
            _entry("./dev/null", tarfile.CHRTYPE),
            _entry("./usr/bin/sh2", tarfile.LNKTYPE, "./usr/bin/sh"),
        ],
    )
    assert check_rootfs_tarball(ok) == 6
    for name, members, why in (
        ("abs", [_entry("/etc/passwd")], "absolute path"),
        ("dots", [_entry("etc/../../x")], "'..'"),
        ("link", [_entry("x", tarfile.LNKTYPE, "../../etc/shadow")], "'..'"),
        ("sym", [_entry("etc", tarfile.SYMTYPE, "/etc"), _entry("etc/passwd")], "symlink etc/"),
        ("dev", [_entry("sda", tarfile.BLKTYPE)], "device node outside /dev"),
    ):
        with pytest.raises(InvalidArgument, match=why):
            check_rootfs_tarball(_tar(tmp_path / f"{name}.tar", members))
    (tmp_path / "junk.tar").write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(InvalidArgument, match="not a readable tarball"):
        check_rootfs_tarball(tmp_path / "junk.tar")
