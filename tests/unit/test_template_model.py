"""Template definitions: the shipped files, validation errors, the digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument, NotFound
from lxpy.model.template import find_template, load_templates, parse_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"


def test_shipped_busybox() -> None:
    t = load_templates([TEMPLATES])["busybox"]
    assert t.source.kind == "busybox"
    assert t.source.busybox == "/bin/busybox"
    assert t.init == "/sbin/init"
    assert (t.halt_signal, t.reboot_signal) == ("SIGUSR2", "SIGTERM")
    assert t.setup.network == "dhcp"
    assert t.setup.root_password == "locked"
    assert t.description


def test_shipped_debian_bookworm() -> None:
    t = load_templates([TEMPLATES])["debian-bookworm"]
    assert t.source.kind == "debootstrap"
    assert t.source.suite == "bookworm"
    assert t.source.variant == "minbase"
    assert t.source.mirror == ""
    for pkg in ("systemd", "systemd-sysv", "systemd-resolved", "dbus", "iproute2"):
        assert pkg in t.source.packages
    assert (t.halt_signal, t.reboot_signal) == ("SIGRTMIN+3", "SIGINT")
    assert t.init == "/sbin/init"
    assert t.setup.console_getty is True


def test_shipped_debian_templates_are_current_and_have_admin_tools() -> None:
    found = load_templates([TEMPLATES])
    for name, suite, fmt in (
        ("debian-bookworm", "bookworm", "one-line"),
        ("debian-trixie", "trixie", "deb822"),
    ):
        t = found[name]
        assert t.source.suite == suite
        assert t.source.suites == (f"{suite}-updates", f"{suite}-security")
        assert t.source.sources_format == fmt
        assert t.source.mirror == t.source.security_mirror == ""
        for pkg in ("procps", "iproute2", "less", "ca-certificates", "login", "passwd"):
            assert pkg in t.source.packages
        assert (t.halt_signal, t.reboot_signal) == ("SIGRTMIN+3", "SIGINT")
        assert t.setup.console_getty is True


def test_find_template_names_known_ones() -> None:
    with pytest.raises(NotFound) as e:
        find_template([TEMPLATES], "nope")
    assert "busybox" in (e.value.hint or "")


BASE = """
description = "x"
[source]
kind = "debootstrap"
suite = "bookworm"
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + 'colour = "red"\n', "unknown key 'colour'"),
        ('colour = "red"\n' + BASE, "unknown key 'colour'"),
        ('[source]\nkind = "rpm"\n', "source.kind"),
        ('[source]\nkind = "debootstrap"\n', "source.suite"),
        ('halt_signal = "SIGNOPE"\n' + BASE, "halt_signal"),
        ('reboot_signal = "999"\n' + BASE, "reboot_signal"),
        (BASE + '[setup]\nnetwork = "static"\n', "setup.network"),
        ('init = "sbin/init"\n' + BASE, "init"),
        (BASE + 'packages = "systemd"\n', "source.packages"),
        (BASE + "[setup]\nconsole_getty = 1\n", "setup.console_getty"),
        (BASE + '[setup]\nhostname = "x"\n', "unknown key 'hostname'"),
        ('[source]\nkind = "tarball"\n', "source.path"),
        ('[source]\nkind = "busybox"\nsuite = "bookworm"\n', "unknown key 'suite'"),
        ("description = \n", "not valid TOML"),
        ('description = "no source"\n', "[source]"),
        (BASE + 'sources_format = "yaml"\n', "source.sources_format must be one of"),
        (BASE + 'suites = ["bookworm-security main"]\n', "source.suites[0]: not a suite name"),
        (BASE + 'suites = "bookworm-security"\n', "source.suites: expected a list"),
        ('[source]\nkind = "debootstrap"\nsuite = "-x"\n', "source.suite: not a suite name"),
        (BASE + 'security_mirror = "near"\n', "source.security_mirror: expected a URL"),
        (BASE + 'mirror = "http://a b"\n', "source.mirror: expected a URL"),
        ('[source]\nkind = "busybox"\nsuites = []\n', "unknown key 'suites'"),
    ],
)
def test_bad_definitions_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_template("t", text, Path("/defs/t.toml"))
    assert expected in e.value.message
    # Every message says which file it is about.
    assert "/defs/t.toml" in e.value.message


def test_bad_template_name() -> None:
    with pytest.raises(InvalidArgument, match="template name"):
        parse_template("bad_name", BASE)


def test_digest_ignores_comments_and_layout() -> None:
    text = (TEMPLATES / "debian-bookworm.toml").read_text()
    a = parse_template("debian-bookworm", text)
    edited = "# a new comment\n\n" + text.replace("# PID 1", "#   PID one")
    b = parse_template("debian-bookworm", edited)
    assert a.digest() == b.digest()
    # The file a definition came from is not part of what is built.
    c = parse_template("debian-bookworm", text, Path("/elsewhere/debian-bookworm.toml"))
    assert c.digest() == a.digest()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"passwd",\n]', '"passwd",\n    "vim-tiny",\n]'),
        ('"bookworm-updates", ', ""),
        ('sources_format = "one-line"', 'sources_format = "deb822"'),
        ('security_mirror = ""', 'security_mirror = "http://near/debian-security"'),
        ('suite = "bookworm"', 'suite = "trixie"'),
        ('timezone = "Etc/UTC"', 'timezone = "Europe/Berlin"'),
        ('halt_signal = "SIGRTMIN+3"', 'halt_signal = "SIGPWR"'),
        ("console_getty = true", "console_getty = false"),
    ],
)
def test_digest_changes_with_the_definition(old: str, new: str) -> None:
    text = (TEMPLATES / "debian-bookworm.toml").read_text()
    assert old in text
    a = parse_template("debian-bookworm", text)
    b = parse_template("debian-bookworm", text.replace(old, new))
    assert a.digest() != b.digest()


def test_digest_depends_on_the_name() -> None:
    text = (TEMPLATES / "busybox.toml").read_text()
    assert parse_template("busybox", text).digest() != parse_template("bb", text).digest()


def test_tarball_path_is_relative_to_the_definition(tmp_path: Path) -> None:
    t = parse_template(
        "img", '[source]\nkind = "tarball"\npath = "rootfs.tar.gz"\n', tmp_path / "img.toml"
    )
    assert t.source.path == str(tmp_path / "rootfs.tar.gz")


def test_tarball_digest_follows_the_archive_without_sha256(tmp_path: Path) -> None:
    archive = tmp_path / "rootfs.tar"
    archive.write_bytes(b"one")
    text = '[source]\nkind = "tarball"\npath = "rootfs.tar"\n'
    a = parse_template("img", text, tmp_path / "img.toml").digest()
    archive.write_bytes(b"two, longer")
    b = parse_template("img", text, tmp_path / "img.toml").digest()
    assert a != b
