"""The debootstrap kind: a Debian rootfs from a mirror, with mmdebstrap
(preferred: apt resolves dependencies, faster) or debootstrap."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from lxpy.build.mountns import in_own_mounts
from lxpy.build.proc import run_logged, unmount_under
from lxpy.build.report import Reporter
from lxpy.errors import InvalidArgument, NotFound
from lxpy.kernel.inroot import Rootfs
from lxpy.model.template import Source, TemplateDef, is_url

# The share of the whole build the bootstrap tool's run stands for; setup
# and caching take the rest.
BOOTSTRAP_SHARE = 0.85


def choose_tool(source: Source) -> str:
    """The bootstrap program to run: `auto` takes mmdebstrap when installed.

    Raises:
        NotFound: the chosen tool (or, for auto, both) is not installed.
    """
    wanted = ("mmdebstrap", "debootstrap") if source.tool == "auto" else (source.tool,)
    for tool in wanted:
        if shutil.which(tool, path=_path_env()):
            return tool
    raise NotFound(
        f"source.tool: {' or '.join(wanted)} is not installed",
        hint=f"apt-get install {wanted[0]}",
    )


@dataclass(frozen=True)
class AptSource:
    """One archive of a rootfs's apt sources: a mirror and its suites."""

    url: str
    suites: tuple[str, ...]
    components: tuple[str, ...]

    def lines(self) -> list[str]:
        """One-line format: a `deb` line per suite."""
        comps = " ".join(self.components)
        return [f"deb {self.url} {suite} {comps}" for suite in self.suites]


def apt_sources(source: Source, mirror: str, security_mirror: str) -> list[AptSource]:
    """The archives of the rootfs: the suite and its extra suites from the
    mirror, the -security suites from the security mirror.

    Raises:
        InvalidArgument: a mirror is not a URL.
    """
    main, security = source.mirror or mirror, source.security_mirror or security_mirror
    for key, url in (("mirror", main), ("security_mirror", security)):
        if not is_url(url):
            raise InvalidArgument(f"source.{key}: expected a URL, got {url!r}")
    plain = (source.suite, *(s for s in source.suites if not s.endswith("-security")))
    secure = tuple(s for s in source.suites if s.endswith("-security"))
    archives = [AptSource(main, plain, source.components)]
    if secure:
        archives.append(AptSource(security, secure, source.components))
    return archives


def command(tool: str, source: Source, target: Path, archives: list[AptSource]) -> list[str]:
    """The command line that bootstraps `source` into the empty `target`
    from `archives` (apt_sources(); the first one's URL is the mirror)."""
    argv = [tool, f"--variant={source.variant}", f"--components={','.join(source.components)}"]
    if tool == "mmdebstrap":
        # root mode: we are root, so no user namespace or fakechroot is
        # needed; the format is explicit so a target name never picks a
        # tarball by its suffix.
        # --verbose: apt's and dpkg's output goes to the build log too,
        # which is what one reads when a package fails to configure.
        argv[1:1] = ["--mode=root", "--format=directory", "--verbose"]
    if source.packages:
        argv.append(f"--include={','.join(source.packages)}")
    argv += [source.suite, str(target)]
    if tool == "mmdebstrap":
        # Every suite as a sources line: apt installs the newest version
        # any of them has (security fixes included) in one pass.
        argv += [line for a in archives for line in a.lines()]
    else:
        # debootstrap takes one mirror and one suite; the others are
        # upgraded to afterwards (upgrade_command()).
        argv.append(archives[0].url)
    return argv


def upgrade_command(target: Path) -> list[str]:
    """apt in the bootstrapped `target` (chroot): fetch the lists of every
    suite in its sources and upgrade to them."""
    # --error-on=any: a list that cannot be fetched fails the build, rather
    # than an "upgrade" that found nothing to do.
    script = (
        "apt-get -q --error-on=any update && apt-get -q -y "
        "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade"
    )
    return ["chroot", str(target), "/bin/sh", "-c", script]


RESOLV_CONF = "etc/resolv.conf"


def borrow_resolver(path: Path) -> Callable[[], None]:
    """Give the rootfs at `path` the host's resolv.conf, for apt in a
    chroot there (blocking); returns what puts the rootfs's own back.

    Why: with systemd-resolved installed, the rootfs's resolv.conf links
    to resolved's stub under /run, which nothing serves in a chroot.
    """
    with Rootfs(path, "the bootstrapped rootfs") as root:
        link = root.readlink(RESOLV_CONF)
        own = None if link is not None else root.read(RESOLV_CONF)
        with open("/etc/resolv.conf", "rb") as f:
            root.write(RESOLV_CONF, f.read(MAX_RESOLV_CONF))

    def put_back() -> None:
        with Rootfs(path, "the bootstrapped rootfs") as root:
            if link is not None:
                root.symlink(RESOLV_CONF, link)
            elif own is not None:
                root.write(RESOLV_CONF, own)
            else:
                root.remove(RESOLV_CONF)

    return put_back


# More than any resolv.conf holds (glibc reads 3 servers, 6 search domains).
MAX_RESOLV_CONF = 64 * 1024
SOURCES_LIST = "etc/apt/sources.list"
DEB822_FILE = "etc/apt/sources.list.d/debian.sources"
# The keyring apt checks Debian's archives with: .pgp from Debian 13 on,
# .gpg before.
KEYRINGS = (
    "usr/share/keyrings/debian-archive-keyring.pgp",
    "usr/share/keyrings/debian-archive-keyring.gpg",
)


def deb822(archives: list[AptSource], keyring: str | None) -> str:
    """The archives in apt's deb822 format (a stanza each)."""
    stanzas = []
    for a in archives:
        lines = [
            "Types: deb",
            f"URIs: {a.url}",
            f"Suites: {' '.join(a.suites)}",
            f"Components: {' '.join(a.components)}",
        ]
        if keyring:
            lines.append(f"Signed-By: /{keyring}")
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


def write_sources(path: Path, fmt: str, archives: list[AptSource]) -> str:
    """Write the rootfs's apt sources in format `fmt` (blocking); the
    other format's file is removed so apt never reads a suite twice.

    Returns the path written, relative to the rootfs.
    """
    header = "# Written by lxpy when the template was built.\n"
    with Rootfs(path, "the bootstrapped rootfs") as root:
        if fmt == "deb822":
            keyring = next((k for k in KEYRINGS if root.is_file(k)), None)
            root.write(DEB822_FILE, header + deb822(archives, keyring), make_parents=True)
            # The deb822 file alone, as on a fresh Debian 13.
            root.remove(SOURCES_LIST)
            return DEB822_FILE
        text = header + "".join(line + "\n" for a in archives for line in a.lines())
        root.write(SOURCES_LIST, text, make_parents=True)
        root.remove(DEB822_FILE)
        return SOURCES_LIST


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    stage: str
    start: float
    end: float


def _rules(*rows: tuple[str, str, float, float]) -> tuple[_Rule, ...]:
    return tuple(_Rule(re.compile(p), s, a, b) for p, s, a, b in rows)


# What each tool prints as it moves through its phases, mapped to fractions
# of the bootstrap (measured shares of a bookworm minbase build).
STAGES = {
    "mmdebstrap": _rules(
        (r"^I: running apt-get update", "updating", 0.02, 0.10),
        (r"^I: downloading packages", "retrieving", 0.10, 0.40),
        (r"^I: extracting archives", "unpacking", 0.40, 0.50),
        (r"^I: installing essential packages", "configuring", 0.50, 0.70),
        (r"^I: installing remaining packages", "configuring", 0.70, 0.92),
        (r"^I: cleaning", "cleaning", 0.92, 0.98),
        (r"^I: success", "bootstrapped", 1.0, 1.0),
    ),
    "debootstrap": _rules(
        (r"^I: Retrieving (InRelease|Release|Packages)", "updating", 0.02, 0.06),
        (r"^I: Resolving dependencies", "resolving", 0.06, 0.08),
        (r"^I: Retrieving ", "retrieving", 0.08, 0.40),
        (r"^I: (Extracting|Chosen extractor)", "unpacking", 0.40, 0.50),
        (r"^I: (Installing|Unpacking)", "unpacking", 0.50, 0.60),
        (r"^I: Configuring", "configuring", 0.60, 0.95),
        (r"^I: Base system installed", "bootstrapped", 1.0, 1.0),
    ),
}


class StageTracker:
    """Turns a tool's output lines into monotonic (fraction, stage) updates.

    A line that starts a phase jumps to that phase's start; any other line
    creeps a little toward the phase's end, so a long download still moves.
    """

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self.rules = rules
        self.index = -1
        self.fraction = 0.0
        self.stage = "starting"

    def feed(self, line: str) -> tuple[float, str] | None:
        """Update from one line; the new state when it moved noticeably."""
        before = (round(self.fraction, 2), self.stage)
        for i, rule in enumerate(self.rules):
            if i >= self.index and rule.pattern.search(line):
                if i > self.index:
                    self.index = i
                    self.stage = rule.stage
                    self.fraction = max(self.fraction, rule.start)
                break
        if 0 <= self.index:
            end = self.rules[self.index].end
            self.fraction += (end - self.fraction) * 0.03
        after = (round(self.fraction, 2), self.stage)
        return (self.fraction, self.stage) if after != before else None


def _path_env() -> str:
    # The daemon may run with a minimal PATH; the tools and the chroot they
    # run need the sbin directories.
    dirs = os.environ.get("PATH", "").split(":")
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if d not in dirs:
            dirs.append(d)
    return ":".join(d for d in dirs if d)


def clean_apt(path: Path) -> int:
    """Remove downloaded packages and package lists (blocking): a template
    should be small, and `apt update` in a container fetches fresh lists.

    Returns the bytes freed.
    """
    freed = 0
    lists = ("var/cache/apt/archives", "var/cache/apt/archives/partial", "var/lib/apt/lists")
    with Rootfs(path, "the bootstrapped rootfs") as root:
        for rel in lists:
            if not root.is_dir(rel):
                continue
            for name in root.listdir(rel):
                if name == "lock" or (rel.endswith("archives") and not name.endswith(".deb")):
                    continue
                freed += _remove_file(root, f"{rel}/{name}")
        if root.is_dir("var/cache/apt"):
            for name in root.listdir("var/cache/apt"):
                if name.endswith(".bin"):
                    freed += _remove_file(root, f"var/cache/apt/{name}")
    return freed


def _remove_file(root: Rootfs, rel: str) -> int:
    # A regular file's size once removed; anything else stays.
    st = root.stat(rel, follow=False)
    if st is None or not stat.S_ISREG(st.st_mode):
        return 0
    root.remove(rel)
    return st.st_size


async def build(
    defn: TemplateDef, target: Path, mirror: str, security_mirror: str, report: Reporter
) -> None:
    """Bootstrap the definition's Debian suite (and its extra suites) into
    the empty `target`, and write its apt sources.

    Raises:
        InvalidArgument: a mirror is not a URL.
        NotFound: no bootstrap tool is installed.
        LxpyError: the tool failed (its last output lines in the message).
    """
    src = defn.source
    archives = apt_sources(src, mirror, security_mirror)
    tool = choose_tool(src)
    argv = command(tool, src, target, archives)
    report.log("$ " + " ".join(argv))
    tracker = StageTracker(STAGES[tool])
    report.progress(0.0, "bootstrapping")

    def on_line(line: str) -> None:
        report.log(line)
        moved = tracker.feed(line)
        if moved:
            report.progress(moved[0] * BOOTSTRAP_SHARE, moved[1])

    env = dict(os.environ, PATH=_path_env(), LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    try:
        # In a mount namespace of its own: the pool is nosuid and nodev.
        await run_logged(in_own_mounts(target, argv), on_line, env=env, name=tool)
        written = await trio.to_thread.run_sync(write_sources, target, src.sources_format, archives)
        report.log(f"apt sources written to /{written}")
        if tool == "debootstrap" and src.suites:
            upgrade = upgrade_command(target)
            report.log("$ " + " ".join(upgrade))
            report.progress(BOOTSTRAP_SHARE, "upgrading")
            put_back = await trio.to_thread.run_sync(borrow_resolver, target)
            try:
                await run_logged(
                    in_own_mounts(target, upgrade), report.log, env=env, name="apt-get"
                )
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(put_back)
    finally:
        # A killed or failed tool can leave /proc, /sys or /dev mounted in
        # the target; the caller could not delete it then.
        with trio.CancelScope(shield=True):
            await unmount_under(target, report.log)
    freed = await trio.to_thread.run_sync(clean_apt, target)
    report.log(f"apt caches cleaned ({freed // 1024} KiB)")
