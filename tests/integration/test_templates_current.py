"""Templates kept current and useful, and a fresh boot_id per start.

Through a real lxpyd and the real CLI: the Debian templates carry the
security and updates suites and an admin's tools, a console login works
once root has a password, debian-trixie boots to running, `template build
--refresh` makes a new template that new containers get while existing
containers and their snapshots keep theirs, and every start shows the
container a boot_id of its own.

The Debian builds come from the suite's build cache (tests/conftest.py
`test_cache`); the refresh bootstraps trixie from the mirror once per run
(and so keeps its cached tarball current).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lxpy.api.client import Client
from lxpy.model.settings import DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
from tests.conftest import VENV_BIN, Daemon, daemon_in, info, wait_for
from tests.integration.test_boot import system_state
from tests.integration.test_exec import _pty_run, lxpy

pytestmark = pytest.mark.integration

# A Debian build from the mirror takes minutes on this shared machine.
TIME_BOUND = 1500
BUILD_TIMEOUT = 1200
HOST_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# journalctl --list-boots shows boot IDs without dashes.
BOOT_ID_RE = re.compile(r"\b[0-9a-f]{32}\b")
ADMIN_PACKAGES = ("procps", "iproute2", "less", "ca-certificates", "login", "passwd")


def sh(d: Daemon, name: str, script: str, check: bool = True) -> str:
    """`lxpy exec NAME -- sh -c SCRIPT`: its stdout."""
    res = d.cli("exec", name, "--", "sh", "-c", script, check=check)
    return res.stdout


def boot_id(d: Daemon, name: str) -> str:
    return sh(d, name, "cat /proc/sys/kernel/random/boot_id").strip()


def template_meta(d: Daemon, name: str) -> dict[str, object]:
    return Client(d.socket).template(name)


# Written by dpkg during the build: its modification time (kept through the
# build cache's tarball) tells one build of a template from another.
BUILD_MARK = "/var/lib/dpkg/status"


def build_mark(d: Daemon, name: str) -> str:
    """When the files of container `name` were built (BUILD_MARK's mtime)."""
    return sh(d, name, f"stat -c %y {BUILD_MARK}").strip()


def test_boot_id_is_fresh_per_start(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "busybox")
    host = HOST_BOOT_ID.read_text().strip()
    for name, sets in (("unpriv", []), ("priv", ["--set", "security.privileged=true"])):
        d.cli("create", name, "-t", "busybox", *sets)
        d.cli("start", name)
        first = boot_id(d, name)
        assert UUID_RE.fullmatch(first), first
        assert first != host
        # The same for everything in this boot (a second exec), and not
        # writable from inside, even by root.
        assert boot_id(d, name) == first
        res = d.cli("exec", name, "--", "sh", "-c", "echo x > /proc/sys/kernel/random/boot_id",
                    check=False)  # fmt: skip
        assert res.returncode != 0
        assert boot_id(d, name) == first
        d.cli("restart", name)
        second = boot_id(d, name)
        assert UUID_RE.fullmatch(second) and second not in (first, host)
        # The file it came from is not left in the container's /dev.
        assert ".boot_id" not in sh(d, name, "ls -a /dev")
        d.cli("stop", name)
    assert HOST_BOOT_ID.read_text().strip() == host


def test_bookworm_is_current_and_has_admin_tools(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=BUILD_TIMEOUT)
    d.cli("create", "deb", "-t", "debian-bookworm")
    d.cli("start", "deb")
    pid = info(d, "deb")["init_pid"]
    assert system_state(pid) == "running"

    # The sources, in Debian 12's one-line format, with the security suite
    # from the security mirror and the updates suite from the mirror.
    sources = sh(d, "deb", "cat /etc/apt/sources.list")
    lines = [ln for ln in sources.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        f"deb {DEFAULT_MIRROR} bookworm main",
        f"deb {DEFAULT_MIRROR} bookworm-updates main",
        f"deb {DEFAULT_SECURITY_MIRROR} bookworm-security main",
    ]
    assert sh(d, "deb", "ls /etc/apt/sources.list.d").strip() == ""
    # apt reads them: it would fetch the lists of all three suites (asked
    # without fetching: the test's containers have no way out).
    uris = sh(d, "deb", "apt-get --print-uris update")
    for where in (
        f"{DEFAULT_MIRROR}/dists/bookworm/InRelease",
        f"{DEFAULT_MIRROR}/dists/bookworm-updates/InRelease",
        f"{DEFAULT_SECURITY_MIRROR}/dists/bookworm-security/InRelease",
    ):
        assert f"'{where}'" in uris, uris

    # The admin's tools, installed and working.
    status = sh(d, "deb", "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' " +
                " ".join(ADMIN_PACKAGES))  # fmt: skip
    assert sorted(status.split("\n")[:-1]) == sorted(f"{p} installed" for p in ADMIN_PACKAGES)
    assert "systemd" in sh(d, "deb", "ps -e -o comm")
    assert "1: lo:" in sh(d, "deb", "ip -o link show lo")
    assert sh(d, "deb", "echo paged | less -F").strip() == "paged"
    assert sh(d, "deb", "ls /etc/ssl/certs | grep -c pem").strip() != "0"


def test_console_login_once_root_has_a_password(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=BUILD_TIMEOUT)
    d.cli("create", "con", "-t", "debian-bookworm")
    d.cli("start", "con")
    assert system_state(info(d, "con")["init_pid"]) == "running"
    # Locked by default: the getty is there, no password matches.
    assert sh(d, "con", "passwd -S root").split()[1] == "L"
    sh(d, "con", "echo root:s3cret-pw | chpasswd")
    # One session as a person would have it: a wrong password is refused,
    # the right one gives a root shell; logging out brings the prompt back.
    code, out = _pty_run(
        [*lxpy(d), "console", "con"],
        [
            (b"Ctrl-a q to detach", b"\r"),
            (b"login:", b"root\r"),
            (b"Password:", b"wrong\r"),
            (b"Login incorrect", b""),
            (b"login:", b"root\r"),
            (b"Password:", b"s3cret-pw\r"),
            (b"root@con", b"echo LOGGED-$((6*7))-IN\r"),
            (b"LOGGED-42-IN", b"exit\r"),
            (b"login:", b"\x01q"),
        ],
        timeout=120,
    )
    assert code == 0, out
    assert out.count(b"Login incorrect") == 1
    assert out.index(b"Login incorrect") < out.index(b"root@con")


def test_trixie_boots_and_refresh_makes_a_new_template(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-trixie", timeout=BUILD_TIMEOUT)
    before = template_meta(d, "debian-trixie")
    d.cli("create", "old", "-t", "debian-trixie")
    d.cli("start", "old")
    pid = info(d, "old")["init_pid"]
    assert system_state(pid) == "running"
    assert sh(d, "old", ". /etc/os-release; echo $VERSION_ID").strip() == "13"
    # Debian 13's deb822 sources, with the security and updates suites.
    sources = sh(d, "old", "cat /etc/apt/sources.list.d/debian.sources")
    assert f"URIs: {DEFAULT_MIRROR}\nSuites: trixie trixie-updates\n" in sources, sources
    assert f"URIs: {DEFAULT_SECURITY_MIRROR}\nSuites: trixie-security\n" in sources, sources
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring" in sources
    assert sh(d, "old", "test -e /etc/apt/sources.list && echo yes || echo no").strip() == "no"
    status = sh(d, "old", "dpkg-query -W -f '${db:Status-Status}\\n' " + " ".join(ADMIN_PACKAGES))
    assert status.split() == ["installed"] * len(ADMIN_PACKAGES)

    # The journal is on disk (trixie's systemd makes /var/log/journal): a
    # restart, and journald sees two boots.
    first_boot = boot_id(d, "old")
    sh(d, "old", "journalctl --flush")
    d.cli("restart", "old")
    assert system_state(info(d, "old")["init_pid"]) == "running"
    second_boot = boot_id(d, "old")

    def boots() -> list[str]:
        listing = sh(d, "old", "journalctl --list-boots -q")
        return BOOT_ID_RE.findall(listing)

    want = {first_boot.replace("-", ""), second_boot.replace("-", "")}
    wait_for(lambda: want <= set(boots()), 30, "journald to list both boots")
    assert len(want) == 2

    # What the old container and its snapshot hold from the first build.
    old_files = build_mark(d, "old")
    d.cli("snapshot", "create", "old", "s1")

    res = d.cli("template", "build", "debian-trixie", "--refresh", timeout=BUILD_TIMEOUT)
    assert "built template debian-trixie" in res.stdout
    after = template_meta(d, "debian-trixie")
    assert after["built_at"] != before["built_at"]
    assert after["digest"] == before["digest"] and after["stale"] is False

    d.cli("create", "new", "-t", "debian-trixie")
    d.cli("start", "new")
    assert system_state(info(d, "new")["init_pid"]) == "running"
    assert sh(d, "new", "echo exec-works").strip() == "exec-works"
    # The new container has the new build's files, the old one its own.
    new_files = build_mark(d, "new")
    assert new_files != old_files
    assert build_mark(d, "old") == old_files
    # The old container still runs and works, and its snapshot restores to
    # the first build.
    assert sh(d, "old", "echo still-here").strip() == "still-here"
    sh(d, "old", f"touch {BUILD_MARK}")
    assert build_mark(d, "old") != old_files
    d.cli("snapshot", "restore", "old", "s1")
    assert system_state(info(d, "old")["init_pid"]) == "running"
    assert build_mark(d, "old") == old_files

    # An unchanged definition is up to date again: no rebuild without --refresh.
    res = d.cli("template", "build", "debian-trixie")
    assert "up to date" in res.stdout
    assert template_meta(d, "debian-trixie")["built_at"] == after["built_at"]


def test_a_bad_security_mirror_or_suite_is_refused(tmp_path: Path) -> None:
    # lxpyd refuses a bad security_mirror setting before it makes anything.
    conf = tmp_path / "bad.toml"
    conf.write_text('security_mirror = "not a url"\n')
    root = tmp_path / "root"
    res = subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--config", str(conf), "--root", str(root),
         "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0
    assert "security_mirror: expected a URL, got 'not a url'" in res.stderr
    assert not root.exists()


def test_a_bad_suite_in_a_definition_is_named(tmp_path: Path, test_cache: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "sneaky.toml").write_text(
        '[source]\nkind = "debootstrap"\nsuite = "bookworm"\n'
        'suites = ["bookworm-security main contrib"]\n'
    )
    settings = f'pool_size = "3GiB"\ndefault_network = ""\ntemplate_dirs = ["{tdir}"]\n'
    with daemon_in(tmp_path, settings) as d:
        res = d.cli("template", "build", "sneaky", check=False)
        assert res.returncode != 0
        assert "source.suites[0]: not a suite name: 'bookworm-security main contrib'" in res.stderr
        assert "sneaky.toml" in res.stderr
