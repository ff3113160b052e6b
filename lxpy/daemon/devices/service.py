"""Devices of containers: list, add, remove; set up at start, hot-plugged
into a running container, released on stop and delete.

A device is part of the container record (lxpy.model.devices). Adding one
validates it with its type (keys, values, what the host must hold) before
anything changes. On a running container, the type plugs it in at once,
inside an intent of the journal, and the record is written last: a crash
between the two is settled when lxpyd starts again (settle()): a device
plugged but not recorded is unplugged; a removal under way is finished.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from lxpy.daemon.devices import TYPES, device_type
from lxpy.daemon.devices.base import Dev, DeviceHost, StartPlan
from lxpy.daemon.networks import Networks
from lxpy.daemon.state import Daemon
from lxpy.daemon.volumes import Volumes
from lxpy.errors import AlreadyExists, InvalidArgument, LxpyError, NotFound
from lxpy.model.config import Container
from lxpy.model.devices import MAX_DEVICES, parse_device, validate_device_name
from lxpy.model.state import State
from lxpy.model.suggest import not_found_hint
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.devices")


class Devices:
    """Devices of daemon `d`'s containers; NICs on `networks`, disks on
    `volumes`, long-lived device tasks in `nursery`."""

    def __init__(
        self, d: Daemon, networks: Networks, volumes: Volumes, nursery: trio.Nursery
    ) -> None:
        self.d = d
        # The devices in effect in each running container.
        self.active: dict[str, set[str]] = {}
        # What each device type is handed.
        self.host = DeviceHost(d, networks, volumes, nursery, self.active)
        # The devices each running container was started with, as they
        # were: its monitor sets them up again at a reboot inside.
        self.launched: dict[str, dict[str, Mapping[str, str]]] = {}

    # -- reading ------------------------------------------------------------
    def describe(self, name: str, dev: str, options: Mapping[str, str]) -> dict[str, object]:
        """The API's device object."""
        return {
            "name": dev,
            "type": options.get("type", ""),
            "config": {k: v for k, v in options.items() if k != "type"},
            "active": dev in self.active.get(name, ()),
        }

    def list(self, name: str) -> list[dict[str, object]]:
        """GET /1.0/containers/NAME/devices."""
        record = self.d.table.require(name)
        return [self.describe(name, n, o) for n, o in sorted(record.devices.items())]

    def get(self, name: str, dev: str) -> dict[str, object]:
        """GET /1.0/containers/NAME/devices/DEV."""
        record = self.d.table.require(name)
        return self.describe(name, dev, self._require(record, dev))

    def _require(self, record: Container, dev: str) -> Mapping[str, str]:
        found = record.devices.get(dev)
        if found is None:
            raise NotFound(
                f"container {record.name!r} has no device {dev!r}",
                hint=not_found_hint(
                    dev, record.devices, "its devices", f"`lxpy device list {record.name}`"
                ),
            )
        return found

    # -- judging ------------------------------------------------------------
    async def validate(self, name: str, dev: str, raw: object) -> dict[str, str]:
        """Device `dev` of container `name` as stored: its shape, its type's
        keys and values, and what the host must hold for it.

        Raises:
            InvalidArgument, NotFound: naming the device and what is wrong.
        """
        shaped = parse_device(dev, raw)
        t = device_type(shaped["type"])
        options = t.validate(dev, shaped)
        await t.check(self.host, Dev(name, dev, options))
        return options

    # -- changing -----------------------------------------------------------
    async def add(self, name: str, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/containers/NAME/devices: `{"name": DEV, "type": TYPE,
        "config": {KEY: VALUE}}`. A running container gets it at once.

        Raises:
            InvalidArgument, NotFound: a bad device (nothing changed);
            AlreadyExists: the name is taken; Unsupported: its type cannot
            be added to a running container.
        """
        d = self.d
        dev = validate_device_name(body.get("name"))
        kind = body.get("type")
        config = body.get("config", {})
        if not isinstance(kind, str):
            raise InvalidArgument(f"'type' must be a device type, got {kind!r}")
        if not isinstance(config, dict):
            raise InvalidArgument(f"'config' must be an object of key: value, got {config!r}")
        async with d.table.lock(name):
            record = d.table.require(name)
            if dev in record.devices:
                raise AlreadyExists(
                    f"container {name!r} has a device {dev!r} already",
                    hint=f"remove it first: lxpy device remove {name} {dev}",
                )
            if len(record.devices) >= MAX_DEVICES:
                raise InvalidArgument(f"container {name!r} has {MAX_DEVICES} devices, the most")
            options = await self.validate(name, dev, {**config, "type": kind})
            t = device_type(kind)
            device = Dev(name, dev, options)
            pid = self._init_pid(name)
            new = record.with_device(dev, options)
            async with d.journal.begin(
                "device-add",
                durable=pid is not None,
                # Live state a host crash ends: it need only outlive lxpyd.
                sync=False,
                name=name,
                device=dev,
                options=options,
            ) as op:
                in_effect = False
                if pid is not None:
                    in_effect = await t.plug(self.host, device, pid) is not False
                    op.undo(lambda: t.unplug(self.host, device, pid), f"unplug {device.label}")
                    op.step("plugged")
                await d.files(d.registry.save, new)
                op.step("recorded")
            d.table.put(new)
            if in_effect:
                self.active.setdefault(name, set()).add(dev)
        d.bus.lifecycle("device-added", f"containers/{name}", {"device": dev, "live": in_effect})
        return self.describe(name, dev, options)

    async def remove(self, name: str, dev: str) -> dict[str, object]:
        """DELETE /1.0/containers/NAME/devices/DEV; a running container
        loses it at once.

        Raises:
            NotFound; Unsupported: its type cannot leave a running container.
        """
        d = self.d
        async with d.table.lock(name):
            record = d.table.require(name)
            options = self._require(record, dev)
            device = Dev(name, dev, options)
            t = device_type(options["type"])
            pid = self._init_pid(name)
            live = pid is not None and dev in self.active.get(name, ())
            new = record.with_device(dev, None)
            async with d.journal.begin(
                "device-remove",
                durable=pid is not None,
                sync=False,
                name=name,
                device=dev,
                options=dict(options),
            ) as op:
                if live and pid is not None:
                    await t.unplug(self.host, device, pid)
                    op.undo(lambda: t.plug(self.host, device, pid), f"plug {device.label} back")
                    op.step("unplugged")
                await d.files(d.registry.save, new)
                op.step("recorded")
            d.table.put(new)
            self.active.get(name, set()).discard(dev)
            await _quietly(t.forget(self.host, device), f"forget {device.label}")
        d.bus.lifecycle("device-removed", f"containers/{name}", {"device": dev, "live": live})
        return {}

    def _init_pid(self, name: str) -> int | None:
        # The host pid of a running (or frozen) container's init, else None.
        if self.d.states.get(name) not in (State.RUNNING, State.FROZEN, State.STARTING):
            return None
        info = self.d.running.get(name)
        return info.init_pid if info is not None else None

    # -- a container's life -------------------------------------------------
    async def plan_start(self, record: Container) -> StartPlan:
        """Set every device of `record` up for its start (undone on error).

        Raises:
            LxpyError: naming the device that cannot be set up.
        """
        plan = StartPlan(undos=AsyncRevert(f"devices of container {record.name!r}"))
        async with plan.undos:
            for dev, options in sorted(record.devices.items(), key=_mount_order):
                t = device_type(options.get("type", ""))
                device = Dev(record.name, dev, options)
                try:
                    await t.start(self.host, device, plan)
                except LxpyError as e:
                    # Named once: the type's own messages name the device.
                    if f"device {dev!r}" not in e.message:
                        e.message = f"{device.label}: {e.message}"
                    raise
        self.active[record.name] = set(plan.active)
        self.launched[record.name] = {dev: record.devices[dev] for dev in plan.active}
        return plan

    async def undo_start(self, plan: StartPlan) -> None:
        """Reverse what plan_start() did, for a start that failed."""
        await plan.undos.revert()

    async def started(self, name: str, pid: int) -> None:
        """Container `name` runs, its init as host pid `pid`."""
        record = self.d.records.get(name)
        if record is None:
            return
        for dev in sorted(self.active.get(name, ())):
            options = record.devices.get(dev)
            if options is not None:
                t = device_type(options["type"])
                await _quietly(t.started(self.host, Dev(name, dev, options), pid), f"{dev} started")

    async def stopped(self, name: str) -> None:
        """Container `name` has stopped: release what its devices took."""
        record = self.d.records.get(name)
        active = self.active.pop(name, set())
        self.launched.pop(name, None)
        if record is None:
            return
        for dev in sorted(active):
            options = record.devices.get(dev)
            if options is not None:
                t = device_type(options["type"])
                await _quietly(t.stop(self.host, Dev(name, dev, options)), f"stop {dev} of {name}")

    async def adopted(self, name: str, pid: int) -> None:
        """Container `name` was found running (started by an earlier lxpyd),
        its init as host pid `pid`: each type makes again what ended with
        that lxpyd."""
        record = self.d.records.get(name)
        if record is None:
            return
        self.active[name] = set(record.devices)
        self.launched[name] = dict(record.devices)
        for dev, options in sorted(record.devices.items()):
            t = device_type(options.get("type", ""))
            await _quietly(t.adopted(self.host, Dev(name, dev, options), pid), f"adopt {dev}")

    async def rebooted(self, name: str, pid: int) -> None:
        """Container `name` rebooted inside (new init: host pid `pid`). Its
        monitor set up again what it was started with: devices removed
        since are taken out again, those added since plugged in again, and
        the others set up again where they lived in the old init's mount
        namespace (a unix device's node)."""
        d = self.d
        async with d.table.lock(name):
            record = d.records.get(name)
            if record is None or self._init_pid(name) != pid:
                return
            launched = self.launched.get(name, {})
            for dev, options in launched.items():
                if record.devices.get(dev) != options:
                    t = device_type(options.get("type", ""))
                    await _quietly(
                        t.unplug(self.host, Dev(name, dev, options), pid), f"unplug {dev}"
                    )
            for dev in sorted(self.active.get(name, set())):
                now = record.devices.get(dev)
                if now is None:
                    continue
                t = device_type(now["type"])
                if launched.get(dev) != now:
                    await _quietly(t.plug(self.host, Dev(name, dev, now), pid), f"plug {dev}")
                else:
                    await _quietly(t.rebooted(self.host, Dev(name, dev, now), pid), f"set up {dev}")

    async def forget_all(self, record: Container) -> None:
        """Container `record` is deleted: its devices are forgotten."""
        self.active.pop(record.name, None)
        for dev, options in record.devices.items():
            t = device_type(options.get("type", ""))
            await _quietly(t.forget(self.host, Dev(record.name, dev, options)), f"forget {dev}")

    # -- recovery -----------------------------------------------------------
    async def settle(self) -> None:
        """Settle the device intents a crash left (after adoption, so that
        running containers are known): a device plugged but not recorded
        is unplugged; a removal is finished."""
        d = self.d
        for t in TYPES.values():
            await _quietly(t.daemon_ready(self.host), f"{t.NAME} devices ready")
        for path, fields in await d.files(d.journal.pending):
            op = fields.get("op")
            if op not in ("device-add", "device-remove"):
                continue
            name, dev = str(fields.get("name")), str(fields.get("device"))
            options = fields.get("options")
            record = d.records.get(name)
            try:
                if not isinstance(options, dict) or record is None:
                    outcome = "gone"
                else:
                    outcome = await self._settle_one(str(op), record, dev, options)
            except (OSError, LxpyError) as e:
                log.error("recovery: cannot settle %s of %s/%s: %s", op, name, dev, e)
                continue
            log.warning("recovery: %s of %s/%s, cut short by a crash: %s", op, name, dev, outcome)
            await d.files(d.journal.done, path)

    async def _settle_one(
        self, op: str, record: Container, dev: str, options: dict[str, str]
    ) -> str:
        d = self.d
        name = record.name
        device = Dev(name, dev, options)
        t = device_type(options.get("type", ""))
        pid = self._init_pid(name)
        if op == "device-add":
            if record.devices.get(dev) == options:
                return "completed"
            if pid is not None:
                await t.unplug(self.host, device, pid)
            self.active.get(name, set()).discard(dev)
            return "undone"
        if dev in record.devices:
            if pid is not None:
                await t.unplug(self.host, device, pid)
            new = record.with_device(dev, None)
            await d.files(d.registry.save, new)
            d.table.put(new)
        self.active.get(name, set()).discard(dev)
        await _quietly(t.forget(self.host, device), f"forget {device.label}")
        return "completed"


def _mount_order(item: tuple[str, Mapping[str, str]]) -> tuple[int, str]:
    # Shallower paths first, so a disk inside another disk's path is
    # mounted on top of it, not under it.
    path = item[1].get("path", "")
    return (path.count("/"), item[0])


async def _quietly(aw: object, what: str) -> None:
    # Releasing runs on: its failure is logged, not raised.
    try:
        await aw  # type: ignore[misc]
    except Exception:
        log.exception("devices: %s failed", what)
