"""The builders' pure parts: no root, no network, no processes beyond `true`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lxpy.build import busybox, cache, debootstrap, setup, systemd_units
from lxpy.errors import InvalidArgument, LxpyError
from lxpy.kernel.inroot import Rootfs
from lxpy.model.template import Source, parse_template


def test_static_elf_detection() -> None:
    # The interpreter itself is dynamically linked on Debian.
    assert busybox.is_static_elf(Path(sys.executable).resolve()) is False
    if Path("/bin/busybox").exists():
        assert busybox.is_static_elf(Path("/bin/busybox")) is True


def test_static_elf_rejects_non_elf(tmp_path: Path) -> None:
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(LxpyError, match="not an ELF"):
        busybox.is_static_elf(f)


def test_dynamic_busybox_names_the_package() -> None:
    defn = parse_template(
        "bb", f'[source]\nkind = "busybox"\nbusybox = "{Path(sys.executable).resolve()}"\n'
    )
    with pytest.raises(LxpyError) as e:
        busybox.check_busybox(defn)
    assert "dynamically linked" in e.value.message
    assert "busybox-static" in (e.value.hint or "")


def test_parse_applets() -> None:
    listing = "usr/bin/[\nbin/sh\nsbin/init\nlinuxrc\n../../etc/x\n\n"
    assert busybox.parse_applets(listing) == ["usr/bin/[", "bin/sh", "sbin/init"]
    assert busybox.parse_version("BusyBox v1.35.0 (Debian 1:1.35.0-4) multi-call binary.") == (
        "1.35.0"
    )


def test_mmdebstrap_and_debootstrap_commands() -> None:
    src = Source(kind="debootstrap", suite="bookworm", packages=("systemd", "iproute2"))
    archives = debootstrap.apt_sources(src, "http://m/debian", "http://s/debian-security")
    argv = debootstrap.command("mmdebstrap", src, Path("/t"), archives)
    assert argv[:3] == ["mmdebstrap", "--mode=root", "--format=directory"]
    assert "--include=systemd,iproute2" in argv
    assert argv[-3:] == ["bookworm", "/t", "deb http://m/debian bookworm main"]
    argv = debootstrap.command("debootstrap", src, Path("/t"), archives)
    assert argv[0] == "debootstrap" and "--mode=root" not in argv
    assert "--variant=minbase" in argv and "--components=main" in argv
    assert argv[-3:] == ["bookworm", "/t", "http://m/debian"]


def test_extra_suites_come_from_their_mirrors() -> None:
    src = Source(
        kind="debootstrap",
        suite="bookworm",
        components=("main", "contrib"),
        suites=("bookworm-updates", "bookworm-security"),
    )
    archives = debootstrap.apt_sources(src, "http://m/debian", "http://s/debian-security")
    argv = debootstrap.command("mmdebstrap", src, Path("/t"), archives)
    assert argv[-4:] == [
        "/t",
        "deb http://m/debian bookworm main contrib",
        "deb http://m/debian bookworm-updates main contrib",
        "deb http://s/debian-security bookworm-security main contrib",
    ]
    text = debootstrap.deb822(archives, "usr/share/keyrings/debian-archive-keyring.pgp")
    assert text == (
        "Types: deb\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp\n\n"
        "Types: deb\nURIs: http://s/debian-security\nSuites: bookworm-security\n"
        "Components: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp\n"
    )
    # The definition's own security mirror wins over the daemon's.
    own = Source(
        kind="debootstrap",
        suite="trixie",
        suites=("trixie-security",),
        security_mirror="http://near/sec",
    )
    assert debootstrap.apt_sources(own, "http://m/d", "http://s/d")[1].url == "http://near/sec"
    with pytest.raises(InvalidArgument, match="source.security_mirror"):
        debootstrap.apt_sources(src, "http://m/debian", "not a url")


def test_stage_tracker_is_monotonic() -> None:
    t = debootstrap.StageTracker(debootstrap.STAGES["debootstrap"])
    seen = []
    for line in [
        "I: Retrieving InRelease",
        "I: Resolving dependencies of required packages...",
        "I: Retrieving libc6 2.36",
        "I: Validating libc6 2.36",
        "I: Retrieving Packages",  # an earlier phase's pattern must not go back
        "I: Extracting base-files...",
        "I: Configuring libc-bin...",
        "I: Base system installed successfully.",
    ]:
        t.feed(line)
        seen.append((t.fraction, t.stage))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)
    assert seen[3][1] == "retrieving" and seen[4][1] == "retrieving"
    assert seen[-1] == (1.0, "bootstrapped")


def test_absolute_links_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd").write_text("")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("/lib/systemd/systemd")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("inside\n")
    with Rootfs(tmp_path, "test") as root:
        assert root.realpath("/sbin/init") == "/usr/lib/systemd/systemd"
        (tmp_path / "escape").symlink_to("/../../etc")
        assert root.read_text("escape/passwd") == "inside\n"
        assert setup.init_flavour(root, "/sbin/init") is setup.Flavour.SYSTEMD


def test_enable_unit_follows_install_section(tmp_path: Path) -> None:
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    (units / "a.service").write_text(
        "[Unit]\nDescription=a\n[Install]\nWantedBy=multi-user.target\n"
        "Alias=dbus-org.a.service\nAlso=a.socket\n"
    )
    (units / "a.socket").write_text("[Install]\nWantedBy=sockets.target\n")
    root = Rootfs(tmp_path, "test")
    links = systemd_units.enable_unit(root, "a.service")
    etc = tmp_path / "etc/systemd/system"
    assert (etc / "multi-user.target.wants/a.service").readlink() == Path(
        "/lib/systemd/system/a.service"
    )
    assert (etc / "dbus-org.a.service").is_symlink()
    assert (etc / "sockets.target.wants/a.socket").is_symlink()
    assert len(links) == 3
    with pytest.raises(LxpyError, match="no such unit"):
        systemd_units.enable_unit(root, "missing.service")
    systemd_units.mask_unit(root, "a.service")
    assert systemd_units.is_masked(root, "a.service")
    assert systemd_units.unmask_unit(root, "a.service")
    root.close()


def test_root_password_and_timezone(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root::0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/shadow").write_text("root:$6$old:19000:0:99999:7:::\nbin:*:1::::::\n")
    root = Rootfs(tmp_path, "test")
    setup.set_root_password(root, "locked")
    assert (tmp_path / "etc/shadow").read_text().splitlines()[0].startswith("root:*:19000:")
    assert (tmp_path / "etc/passwd").read_text().startswith("root:x:0:0:")
    setup.set_root_password(root, "$6$salt$hash")
    assert (tmp_path / "etc/shadow").read_text().startswith("root:$6$salt$hash:")
    with pytest.raises(InvalidArgument, match="setup.root_password"):
        setup.set_root_password(root, "a:b")
    with pytest.raises(InvalidArgument, match="setup.timezone"):
        setup.set_timezone(root, "../../etc/passwd")
    with pytest.raises(InvalidArgument, match="setup.timezone"):
        setup.set_timezone(root, "Nowhere/Atlantis")
    setup.set_timezone(root, "Etc/UTC")
    root.close()
    assert (tmp_path / "etc/timezone").read_text() == "Etc/UTC\n"


def test_stale_cache_files(tmp_path: Path) -> None:
    d1, d2 = "a" * 64, "b" * 64
    for name in (f"debian-{d1}.tar", f"debian-{d2}.tar", f"debian-bookworm-{d1}.tar", "x.tar"):
        (tmp_path / name).write_text("")
    stale = cache.stale_files(tmp_path, "debian", tmp_path / f"debian-{d2}.tar")
    assert [p.name for p in stale] == [f"debian-{d1}.tar"]


@pytest.mark.parametrize("own", ["link", "file", "none"])
def test_borrowed_resolver_is_put_back(tmp_path: Path, own: str) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "resolv.conf"
    if own == "link":
        conf.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    elif own == "file":
        conf.write_text("nameserver 192.0.2.1\n")
    put_back = debootstrap.borrow_resolver(tmp_path)
    # apt in the chroot resolves as the host does.
    assert not conf.is_symlink()
    assert conf.read_bytes() == Path("/etc/resolv.conf").read_bytes()
    put_back()
    if own == "link":
        assert os.readlink(conf) == "../run/systemd/resolve/stub-resolv.conf"
    elif own == "file":
        assert conf.read_text() == "nameserver 192.0.2.1\n"
    else:
        assert not conf.exists()
