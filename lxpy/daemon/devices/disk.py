"""`disk` devices: a host directory or file, or a custom volume, mounted
inside the container.

    lxpy device add web www disk source=/srv/www path=/var/www [readonly=true]

Keys (docs/devices.md): `source` (a host path, or with `pool=default` the
name of a custom volume), `path` inside, `readonly`, `shift` (an idmapped
mount, the default: IDs are the same on both sides), `required` (false:
start without a missing source).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from lxpy.daemon.devices.base import Dev, DeviceType, Key, boolean, is_true
from lxpy.errors import InvalidArgument, NotFound
from lxpy.kernel.inroot import Rootfs, RootfsError

if TYPE_CHECKING:
    from lxpy.daemon.service import Daemon

# Where a disk may not go: the container's own kernel file systems, which
# the launch mounts over anything there, and its root.
RESERVED = ("/proc", "/sys", "/dev", "/run")
POOL = "default"


def _source(key: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{key}: must not be empty")
    return value


def _path(key: str, value: str) -> str:
    parts = value.split("/")
    if not value.startswith("/") or ".." in parts:
        raise InvalidArgument(
            f"{key}: expected an absolute path inside the container, got {value!r}",
            hint="e.g. path=/srv/data (no '..')",
        )
    clean = "/" + "/".join(p for p in parts if p not in ("", "."))
    if clean == "/":
        raise InvalidArgument(f"{key}: a disk cannot be mounted on the container's root")
    for top in RESERVED:
        if clean == top or clean.startswith(top + "/"):
            raise InvalidArgument(
                f"{key}: {clean} is under {top}, which the container's start mounts anew",
                hint="pick a path outside /proc, /sys, /dev and /run",
            )
    return clean


def _pool(key: str, value: str) -> str:
    if value != POOL:
        raise InvalidArgument(
            f"{key}: lxpy has one storage pool, {POOL!r}, not {value!r}",
            hint=f"pool={POOL} source=VOLUME (`lxpy volume list`)",
        )
    return value


class Disk(DeviceType):
    NAME = "disk"
    DOC = "a host directory or file, or a custom volume, mounted inside"
    KEYS: ClassVar[Mapping[str, Key]] = {
        "source": Key(
            _source,
            "host path of a directory or file (absolute), or with pool= the name of a "
            "custom volume",
            required=True,
        ),
        "path": Key(_path, "where it appears inside the container (absolute)", required=True),
        "readonly": Key(boolean, "true: mounted read-only (default false)"),
        "shift": Key(
            boolean,
            "true (default): idmapped, so an ID inside is the same ID on the host; "
            "false: as the container's ID range maps them (root inside is the range's base)",
        ),
        "required": Key(boolean, "false: the container starts without a missing source"),
        "pool": Key(_pool, f"{POOL!r}: source names a custom volume (`lxpy volume create`)"),
    }

    def check_options(self, dev: str, options: Mapping[str, str]) -> None:
        if "pool" not in options:
            src = options["source"]
            if not src.startswith("/") or ".." in src.split("/"):
                raise InvalidArgument(
                    f"device {dev!r}: source: expected an absolute host path, got {src!r}",
                    hint="a custom volume is named with pool=default source=VOLUME",
                )

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        return "disk devices mount host paths or shared volumes into the container"

    async def check(self, d: Daemon, dev: Dev) -> None:
        opts = dev.options
        record = d.require(dev.container)
        for other, o in record.devices.items():
            if other != dev.name and o.get("type") == self.NAME and o.get("path") == opts["path"]:
                raise InvalidArgument(
                    f"device {dev.name!r}: path: {opts['path']} is the path of "
                    f"device {other!r} already",
                    hint="each disk needs a path of its own",
                )
        source = self.host_source(d, opts)
        is_dir = await d.files(_source_kind, source, dev, is_true(opts, "required", True))
        if is_dir is None:
            return
        rootfs = d.backend.container_path(dev.container)
        await d.files(_check_target, rootfs, dev, is_dir)

    def host_source(self, d: Daemon, options: Mapping[str, str]) -> str:
        """The host path the device mounts."""
        return options["source"]


def _source_kind(source: str, dev: Dev, required: bool) -> bool | None:
    # Whether the source is a directory (else a file); None: missing and
    # not required.
    try:
        st = os.stat(source)
    except FileNotFoundError:
        if not required:
            return None
        raise NotFound(
            f"device {dev.name!r}: source {source} does not exist",
            hint="make it first, or add required=false to start without it",
        ) from None
    except OSError as e:
        raise InvalidArgument(f"device {dev.name!r}: source {source}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        return True
    if stat.S_ISREG(st.st_mode):
        return False
    raise InvalidArgument(
        f"device {dev.name!r}: source {source} is neither a directory nor a regular file",
        hint="device nodes are passed with unix-char or unix-block devices",
    )


def _check_target(rootfs: os.PathLike[str], dev: Dev, is_dir: bool) -> None:
    # What is at the mount point inside the rootfs now (symlinks followed
    # inside it only): nothing, or the kind the source needs.
    path = dev.options["path"]
    try:
        with Rootfs(rootfs, f"container {dev.container!r}") as root:
            st = root.stat(path)
    except RootfsError as e:
        raise InvalidArgument(f"device {dev.name!r}: path: {e.message}", e.hint) from None
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode) != is_dir:
        want = "a directory" if is_dir else "a file"
        raise InvalidArgument(
            f"device {dev.name!r}: path {path} is not {want} in the container, "
            f"as source {dev.options['source']} is",
            hint="pick another path, or remove what is there inside the container",
        )
