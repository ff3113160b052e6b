"""Template definitions: one TOML file per template (see docs/templates.md)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lxpy.errors import InvalidArgument, NotFound
from lxpy.model import tomlw
from lxpy.model.names import validate_name
from lxpy.model.suggest import not_found_hint
from lxpy.model.units import parse_signal, signal_name

SOURCE_KINDS = ("busybox", "debootstrap", "tarball")
BOOTSTRAP_TOOLS = ("auto", "mmdebstrap", "debootstrap")
NETWORK_SETUPS = ("dhcp", "none")
# How a Debian rootfs's apt sources are written: "one-line" is
# /etc/apt/sources.list (Debian 12's installer), "deb822" is
# /etc/apt/sources.list.d/debian.sources (Debian 13's).
SOURCES_FORMATS = ("one-line", "deb822")
# What the [setup] steps write into a rootfs (lxpy/build/setup.py): bump it
# when they change, so built templates and cached tarballs count as stale.
# 2: networkd on eth0 is IPv4-only, keyed on the MAC, leaves the hostname.
SETUP_REVISION = 2
# A suite (or codename) as it goes on an apt sources line: one word.
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


@dataclass(frozen=True)
class Source:
    kind: str
    # debootstrap
    suite: str = ""
    variant: str = "minbase"
    tool: str = "auto"
    mirror: str = ""  # empty: the daemon's `mirror` setting
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()
    # More suites in the rootfs's apt sources, installed from at build time
    # too: "bookworm-updates" from `mirror`, a name ending in "-security"
    # from `security_mirror`.
    suites: tuple[str, ...] = ()
    security_mirror: str = ""  # empty: the daemon's `security_mirror` setting
    sources_format: str = "one-line"
    # busybox: path of a static busybox on the host
    busybox: str = "/bin/busybox"
    # tarball: a rootfs archive (relative paths are relative to the definition)
    path: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Setup:
    network: str = "dhcp"
    console_getty: bool = True
    # "locked", or a crypt(3) hash to set as root's password.
    root_password: str = "locked"
    timezone: str = "Etc/UTC"


@dataclass(frozen=True)
class TemplateDef:
    name: str
    description: str
    source: Source
    setup: Setup = field(default_factory=Setup)
    init: str = "/sbin/init"
    halt_signal: str = "SIGPWR"
    reboot_signal: str = "SIGINT"
    # Where the definition was read from (not part of the hash).
    file: str = ""

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("file")
        return data

    def digest(self) -> str:
        """Hash of what the build depends on: an edit to the file that changes
        the definition changes it; reformatting or comments do not."""
        payload = json.dumps(self.to_json(), sort_keys=True).encode()
        h = hashlib.sha256(payload)
        h.update(f"setup-revision:{SETUP_REVISION}".encode())
        if self.source.kind == "tarball" and not self.source.sha256:
            # Without a declared checksum, a replaced archive must still count
            # as a change: fold in its size and mtime.
            try:
                st = Path(self.source.path).stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                pass
        return h.hexdigest()


def is_url(value: str) -> bool:
    """Whether `value` can be a mirror URL on an apt sources line (one word
    with a scheme)."""
    return "://" in value and not any(c.isspace() for c in value)


def _strs(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _check_keys(where: str, data: Mapping[str, object], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise InvalidArgument(
                f"{where}: unknown key {key!r}", hint="allowed: " + ", ".join(sorted(allowed))
            )


def _str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: expected a string, got {value!r}")
    return value


def parse_template(name: str, text: str, file: Path | None = None) -> TemplateDef:
    """Parse and validate one template definition.

    Raises:
        InvalidArgument: naming the file, the key and what is wrong.
    """
    where = str(file) if file else name
    validate_name(name, "template")
    data = tomlw.loads(text, where)
    _check_keys(
        where,
        data,
        ("description", "init", "halt_signal", "reboot_signal", "source", "setup"),
    )
    src = data.get("source")
    if not isinstance(src, dict):
        raise InvalidArgument(f"{where}: a [source] table is required")
    kind = src.get("kind")
    if kind not in SOURCE_KINDS:
        raise InvalidArgument(
            f"{where}: source.kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}"
        )
    per_kind = {
        "busybox": ("busybox",),
        "debootstrap": (
            "suite",
            "variant",
            "tool",
            "mirror",
            "components",
            "packages",
            "suites",
            "security_mirror",
            "sources_format",
        ),
        "tarball": ("path", "sha256"),
    }[kind]
    _check_keys(f"{where}: [source]", src, ("kind", *per_kind))
    kw: dict[str, object] = {"kind": kind}
    for key, value in src.items():
        if key == "kind":
            continue
        if key in ("components", "packages", "suites"):
            kw[key] = _strs(f"{where}: source.{key}", value)
        else:
            kw[key] = _str(f"{where}: source.{key}", value)
    if kind == "debootstrap":
        if not kw.get("suite"):
            raise InvalidArgument(f"{where}: source.suite is required for debootstrap")
        if kw.get("tool", "auto") not in BOOTSTRAP_TOOLS:
            raise InvalidArgument(
                f"{where}: source.tool must be one of {', '.join(BOOTSTRAP_TOOLS)}"
            )
        if kw.get("sources_format", "one-line") not in SOURCES_FORMATS:
            raise InvalidArgument(
                f"{where}: source.sources_format must be one of {', '.join(SOURCES_FORMATS)}, "
                f"got {kw['sources_format']!r}"
            )
        extra = kw.get("suites", ())
        assert isinstance(extra, tuple)
        named = [("suite", kw["suite"]), *((f"suites[{i}]", v) for i, v in enumerate(extra))]
        for key, value in named:
            # Each one is a word of an apt sources line and an argument of
            # the bootstrap tool: nothing else may ride along.
            if not _SUITE.fullmatch(str(value)):
                raise InvalidArgument(
                    f"{where}: source.{key}: not a suite name: {value!r}",
                    hint="letters, digits, '.', '+' and '-', e.g. bookworm-security",
                )
        for key in ("mirror", "security_mirror"):
            if kw.get(key) and not is_url(str(kw[key])):
                raise InvalidArgument(f"{where}: source.{key}: expected a URL, got {kw[key]!r}")
    if kind == "tarball":
        path = str(kw.get("path", ""))
        if not path:
            raise InvalidArgument(f"{where}: source.path is required for tarball")
        if file is not None and not path.startswith("/"):
            kw["path"] = str((file.parent / path).resolve())
    source = Source(**kw)  # type: ignore[arg-type]

    st = data.get("setup", {})
    if not isinstance(st, dict):
        raise InvalidArgument(f"{where}: [setup] must be a table")
    _check_keys(f"{where}: [setup]", st, ("network", "console_getty", "root_password", "timezone"))
    skw: dict[str, object] = {}
    if "network" in st:
        if st["network"] not in NETWORK_SETUPS:
            raise InvalidArgument(
                f"{where}: setup.network must be one of {', '.join(NETWORK_SETUPS)}"
            )
        skw["network"] = st["network"]
    if "console_getty" in st:
        if not isinstance(st["console_getty"], bool):
            raise InvalidArgument(f"{where}: setup.console_getty must be true or false")
        skw["console_getty"] = st["console_getty"]
    for key in ("root_password", "timezone"):
        if key in st:
            skw[key] = _str(f"{where}: setup.{key}", st[key])
    setup = Setup(**skw)  # type: ignore[arg-type]

    top: dict[str, str] = {}
    for key in ("description", "init", "halt_signal", "reboot_signal"):
        if key in data:
            top[key] = _str(f"{where}: {key}", data[key])
    for key in ("halt_signal", "reboot_signal"):
        if key in top:
            top[key] = signal_name(parse_signal(top[key], f"{where}: {key}"))
    if "init" in top and not top["init"].startswith("/"):
        raise InvalidArgument(f"{where}: init must be an absolute path")
    return TemplateDef(
        name=name,
        description=top.get("description", ""),
        source=source,
        setup=setup,
        file=str(file or ""),
        **{k: v for k, v in top.items() if k != "description"},
    )


def load_templates(dirs: Iterable[Path]) -> dict[str, TemplateDef]:
    """All definitions in `dirs` (`NAME.toml`); a later directory overrides an earlier one.

    Raises:
        InvalidArgument: for the first invalid file.
    """
    found: dict[str, TemplateDef] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            found[f.stem] = parse_template(f.stem, f.read_text(), f)
    return found


def find_template(dirs: Iterable[Path], name: str) -> TemplateDef:
    """The definition called `name`.

    Raises:
        NotFound: with the known names as a hint.
    """
    found = load_templates(dirs)
    if name not in found:
        raise NotFound(
            f"template {name!r} not found",
            hint=not_found_hint(name, found, "known templates", "`lxpy template list`"),
        )
    return found[name]
