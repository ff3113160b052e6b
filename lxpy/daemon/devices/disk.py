"""`disk` devices: a host directory or file, or a custom volume, mounted
inside the container.

    lxpy device add web www disk source=/srv/www path=/var/www [readonly=true]

Keys (docs/devices.md): `source` (a host path, or with `pool=default` the
name of a custom volume), `path` inside, `readonly`, `shift` (an idmapped
mount, the default: IDs are the same on both sides), `required` (false:
start without a missing source).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from typing import ClassVar

from lxpy.daemon.devices.base import Dev, DeviceHost, DeviceType, Key, StartPlan, boolean, is_true
from lxpy.errors import InvalidArgument, LxpyError, NotFound
from lxpy.kernel.inroot import Rootfs, RootfsError
from lxpy.model.names import validate_name
from lxpy.runtime import disks

log = logging.getLogger("lxpyd.devices")

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
    HOTPLUG = True
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
        if "pool" in options:
            try:
                validate_name(options["source"], "volume")
            except InvalidArgument as e:
                raise InvalidArgument(f"device {dev!r}: source: {e.message}", e.hint) from None
        else:
            src = options["source"]
            if not src.startswith("/") or ".." in src.split("/"):
                raise InvalidArgument(
                    f"device {dev!r}: source: expected an absolute host path, got {src!r}",
                    hint="a custom volume is named with pool=default source=VOLUME",
                )

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        return "disk devices mount host paths or shared volumes into the container"

    async def check(self, h: DeviceHost, dev: Dev) -> None:
        opts = dev.options
        record = h.d.table.require(dev.container)
        for other, o in record.devices.items():
            if other != dev.name and o.get("type") == self.NAME and o.get("path") == opts["path"]:
                raise InvalidArgument(
                    f"device {dev.name!r}: path: {opts['path']} is the path of "
                    f"device {other!r} already",
                    hint="each disk needs a path of its own",
                )
        if opts.get("pool"):
            await h.volumes.require(opts["source"])
        source = self.host_source(h, opts)
        rootfs = h.d.backend.container_path(dev.container)
        await h.d.files(_check_target, rootfs, source, dev)

    def host_source(self, h: DeviceHost, options: Mapping[str, str]) -> str:
        """The host path the device mounts: its source, or the custom
        volume's path in the pool."""
        if options.get("pool"):
            return str(h.d.backend.volume_path(options["source"]))
        return options["source"]

    async def mount(self, h: DeviceHost, dev: Dev) -> dict[str, object] | None:
        """What the launch path (or a hot-plug) mounts for `dev`; None for
        a missing source that is not required.

        Raises:
            NotFound, InvalidArgument: the source is missing or not a
                directory or file.
        """
        opts = dev.options
        source = self.host_source(h, opts)
        m = await h.d.files(_mount_of, source, dev)
        if m is None:
            log.warning("%s: source %s is missing; started without it", dev.label, source)
        return m

    async def start(self, h: DeviceHost, dev: Dev, plan: StartPlan) -> None:
        m = await self.mount(h, dev)
        if m is not None:
            plan.mounts.append(m)
            plan.active.add(dev.name)

    async def plug(self, h: DeviceHost, dev: Dev, pid: int) -> bool:
        source = self.host_source(h, dev.options)
        try:
            return await h.d.files(_plug, pid, source, dev)
        except (OSError, RootfsError) as e:
            raise _mount_error(dev, e, "mounted in") from None

    async def unplug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        try:
            await h.d.files(disks.unplug, pid, dev.options["path"])
        except OSError as e:
            raise _mount_error(dev, e, "unmounted from") from None


def _mount_error(dev: Dev, e: OSError | RootfsError, verb: str) -> LxpyError:
    why = e.message if isinstance(e, RootfsError) else (e.strerror or str(e))
    return LxpyError(f"{dev.label}: could not be {verb} the running container: {why}")


def _mount_of(source: str, dev: Dev) -> dict[str, object] | None:
    # What the launch or a hot-plug mounts (None: a missing source that
    # is not required).
    opts = dev.options
    is_dir = _source_kind(source, dev, is_true(opts, "required", True))
    if is_dir is None:
        return None
    return {
        "source": source,
        "path": opts["path"],
        "readonly": is_true(opts, "readonly", False),
        "shift": is_true(opts, "shift", True),
        "dir": is_dir,
    }


def _plug(pid: int, source: str, dev: Dev) -> bool:
    m = _mount_of(source, dev)
    if m is None:
        return False
    disks.plug(pid, m, f"container {dev.container!r}")
    return True


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


def _check_target(rootfs: os.PathLike[str], source: str, dev: Dev) -> None:
    # The source, and what is at the mount point inside the rootfs now
    # (symlinks followed inside it only): nothing, or the kind the source
    # needs. One trip to a worker thread.
    is_dir = _source_kind(source, dev, is_true(dev.options, "required", True))
    if is_dir is None:
        return
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
