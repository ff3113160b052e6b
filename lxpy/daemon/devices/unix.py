"""`unix-char` and `unix-block` devices: a host device node passed in.

    lxpy device add web fuse unix-char source=/dev/fuse
    lxpy device add web kvm unix-char source=/dev/kvm uid=0 gid=108 mode=0660
    lxpy device add web data unix-block source=/dev/loop7 path=/dev/xvdb

Keys (docs/devices.md): `source` (the host node), `path` inside (default:
the same as source), `uid`, `gid` (inside the container; default 0) and
`mode` (octal; default 0660) of the node inside.

lxpyd makes a node of its own for the device (owner mapped through the
container's ID map) under ROOT/devices/CONTAINER/, binds it onto `path`
inside, and widens the container's devices cgroup to exactly that device
(lxpy.kernel.hostdev, lxpy.kernel.devices.change_extra). It is set up once
init runs, and added to or removed from a running container at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import trio

from lxpy.daemon.devices.base import Dev, DeviceHost, DeviceType, Key, keyed
from lxpy.errors import InvalidArgument, LxpyError
from lxpy.kernel import devices, hostdev
from lxpy.revert import Revert

TYPES = tuple(hostdev.KINDS)


def _source(key: str, value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/"):
        raise InvalidArgument(
            f"{key}: expected an absolute host path, got {value!r}", hint="e.g. source=/dev/fuse"
        )
    return value


def _id(key: str, value: str) -> str:
    if not value.isdigit() or int(value) >= 1 << 32:
        raise InvalidArgument(f"{key}: expected a numeric ID, got {value!r}", hint=f"{key}=0")
    return str(int(value))


class UnixDevice(DeviceType):
    HOTPLUG = True
    KEYS: ClassVar[Mapping[str, Key]] = {
        "source": Key(_source, "the host's device node (absolute path)", required=True),
        "path": Key(
            keyed(hostdev.check_path), "where the node appears inside (default: the source's path)"
        ),
        "uid": Key(_id, "owner of the node inside the container (default 0)"),
        "gid": Key(_id, "group of the node inside the container (default 0)"),
        "mode": Key(
            keyed(lambda v: f"{hostdev.parse_mode(v):04o}"),
            "permissions of the node inside, octal (default 0660)",
        ),
    }

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        return f"{self.NAME} devices give the container a host device"

    def describe(self, dev: Dev) -> str:
        o = dev.options
        return f"{o['source']} -> {_target(o)} ({o.get('mode', '0660')})"

    async def check(self, h: DeviceHost, dev: Dev) -> None:
        await trio.to_thread.run_sync(hostdev.inspect, dev.options["source"], self.NAME)
        record = h.d.table.require(dev.container)
        for other, o in record.devices.items():
            if other != dev.name and o.get("type") in TYPES and _target(o) == _target(dev.options):
                raise InvalidArgument(
                    f"device {dev.name!r}: path: {_target(o)} is the path of device {other!r}",
                    hint="each node needs a path of its own",
                )

    async def started(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self._plug(h, dev, pid, others=_rules(h, dev, include=False))

    async def plug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self._plug(h, dev, pid, others=_rules(h, dev, include=False))

    async def rebooted(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        # The node was bound into the old init's mount namespace.
        await self._plug(h, dev, pid, others=_rules(h, dev, include=False))

    async def _plug(self, h: DeviceHost, dev: Dev, pid: int, others: list[str]) -> None:
        opts = dev.options
        node = await trio.to_thread.run_sync(hostdev.inspect, opts["source"], self.NAME)
        rule = devices.node_rule(node.kind, node.major, node.minor)
        host = _host_node(h, dev)

        def work() -> None:
            uid = hostdev.host_id(pid, "uid", int(opts.get("uid", "0")))
            gid = hostdev.host_id(pid, "gid", int(opts.get("gid", "0")))
            with Revert(dev.label) as rv:
                hostdev.make_node(str(host), node, uid, gid, int(opts.get("mode", "0660"), 8))
                rv.undo(lambda: host.unlink(missing_ok=True), f"remove {host}")
                cg = h.d.cgroup(dev.container)
                if not devices.change_extra(cg, others, [*others, rule]):
                    raise LxpyError(
                        f"{dev.label}: the host has no devices cgroup to allow {opts['source']} in",
                        hint="lxpy needs the v1 devices controller or cgroup2 with BPF",
                    )
                rv.undo(
                    lambda: devices.change_extra(cg, [*others, rule], others),
                    f"take {opts['source']} out of the devices cgroup",
                )
                hostdev.bind_in(pid, str(host), _target(opts))

        await trio.to_thread.run_sync(work)

    async def unplug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        others = _rules(h, dev, include=False)
        node = await trio.to_thread.run_sync(_node_or_none, dev.options["source"], self.NAME)

        in_use = _in_use(h, dev)

        def work() -> None:
            hostdev.unbind(pid, _target(dev.options))
            if node is not None:
                rule = devices.node_rule(node.kind, node.major, node.minor)
                cg = h.d.cgroup(dev.container)
                devices.change_extra(cg, [*others, rule], others)
                devices.narrow_parent(cg, [rule], in_use)
            _host_node(h, dev).unlink(missing_ok=True)

        await trio.to_thread.run_sync(work)

    async def stop(self, h: DeviceHost, dev: Dev) -> None:
        node = await trio.to_thread.run_sync(_node_or_none, dev.options["source"], self.NAME)
        in_use = _in_use(h, dev)

        def work() -> None:
            _host_node(h, dev).unlink(missing_ok=True)
            if node is not None:
                rule = devices.node_rule(node.kind, node.major, node.minor)
                devices.narrow_parent(h.d.cgroup(dev.container), [rule], in_use)

        await trio.to_thread.run_sync(work)

    async def forget(self, h: DeviceHost, dev: Dev) -> None:
        await self.stop(h, dev)
        top = h.d.settings.paths.devices(dev.container)
        await trio.to_thread.run_sync(lambda: _rmdir_if_empty(top))


class UnixChar(UnixDevice):
    NAME = "unix-char"
    DOC = "a host character device node (/dev/fuse, /dev/net/tun, /dev/kvm) passed in"


class UnixBlock(UnixDevice):
    NAME = "unix-block"
    DOC = "a host block device node (a disk, a loop device) passed in"


def _target(options: Mapping[str, str]) -> str:
    return options.get("path") or hostdev.check_path(options["source"])


def _host_node(h: DeviceHost, dev: Dev) -> Path:
    # lxpyd's own node, on the root's filesystem (never nodev, unlike /run).
    return h.d.settings.paths.device_node(dev.container, dev.name)


def _node_or_none(source: str, kind: str) -> hostdev.Node | None:
    try:
        return hostdev.inspect(source, kind)
    except LxpyError:
        return None


def _rules(h: DeviceHost, dev: Dev, include: bool) -> list[str]:
    # The cgroup rules of the container's other node devices in effect.
    return _container_rules(h, dev.container, None if include else dev.name)


def _container_rules(h: DeviceHost, container: str, skip: str | None = None) -> list[str]:
    record = h.d.records.get(container)
    active = h.active.get(container, set())
    out = []
    for name, o in sorted(record.devices.items() if record else ()):
        if o.get("type") not in TYPES or name not in active or name == skip:
            continue
        node = _node_or_none(o["source"], o["type"])
        if node is not None:
            out.append(devices.node_rule(node.kind, node.major, node.minor))
    return out


def _in_use(h: DeviceHost, dev: Dev) -> list[str]:
    # What the running containers' node devices hold, but `dev`.
    out = []
    for container in sorted(h.active):
        out += _container_rules(h, container, dev.name if container == dev.container else None)
    return out


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
