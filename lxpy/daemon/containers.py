"""Containers: create, delete, config, rename, copy, snapshots, restore.

Each change is a few steps (storage, then the record), run as an intent of
the daemon's journal (lxpy.daemon.journal): each step registers its undo
beside it, so an error leaves nothing half-made, and a crash leaves an
intent the next lxpyd settles (lxpy.daemon.recovery). A container becomes
known only with its record, written last. Requests on one container are
serialized by its lock.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

from lxpy.build.rootfs import set_hostname_files
from lxpy.daemon import configcheck
from lxpy.daemon.devices.service import Devices
from lxpy.daemon.events import now_iso
from lxpy.daemon.images import Images
from lxpy.daemon.journal import Intent
from lxpy.daemon.lifecycle import Lifecycle
from lxpy.daemon.networks import Networks
from lxpy.daemon.resources import Resources
from lxpy.daemon.security import Security, check_update
from lxpy.daemon.security import check_config as check_security
from lxpy.daemon.security import describe as describe_security
from lxpy.daemon.state import Daemon
from lxpy.daemon.templates import Templates
from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound
from lxpy.kernel.inroot import Rootfs
from lxpy.model.config import Container, Owner, check_key_length, validate_config
from lxpy.model.images import parse_image_ref
from lxpy.model.names import validate_name
from lxpy.model.paths import image_volume, rotated_log
from lxpy.model.security import LIVE_KEYS, IdmapRecord
from lxpy.model.state import State
from lxpy.model.suggest import not_found_hint
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.containers")

# Keys a copy does not take over: a pinned address is the source's (as
# Incus, which will not start two instances with one static address; here
# the copy gets a lease of its own and the user may pin another).
COPY_DROPS = frozenset({"ipv4.address"})

# A container object's stats: known (None: not running), or read now
# without / with the disk use, or left out (the plain list).
StatsArg = dict[str, object] | None | Literal["read", "read-disk", "omit"]


def _str_field(body: dict[str, object], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{key!r} must be a string, got {value!r}")
    return value


class Containers:
    """Records of daemon `d`'s containers: create, copy, rename, destroy,
    config and snapshots, with the peers each of those reaches."""

    def __init__(
        self,
        d: Daemon,
        templates: Templates,
        images: Images,
        networks: Networks,
        security: Security,
        resources: Resources,
        devices: Devices,
        lifecycle: Lifecycle,
    ) -> None:
        self.d = d
        self.templates = templates
        self.images = images
        self.networks = networks
        self.security = security
        self.resources = resources
        self.devices = devices
        self.lifecycle = lifecycle

    # -- reading ------------------------------------------------------------
    def _snapshot_names(self, name: str) -> list[str]:
        try:
            return [s.name for s in self.d.backend.list_snapshots(name)]
        except NotFound:
            return []

    async def describe(
        self,
        name: str,
        snaps: list[str] | None = None,
        stats: StatsArg = "read",
        addresses: list[str] | None = None,
    ) -> dict[str, object]:
        """The API's container object.

        Args:
            snaps: its snapshot names, if known.
            addresses: its addresses, if known (else read in its namespace).
            stats: its stats if known (None: it does not run); "read" to
                read them without the disk use, "read-disk" with it, "omit"
                to leave the field out.
        """
        d = self.d
        if snaps is None:
            snaps = await d.storage(self._snapshot_names, name)
        path = str(d.backend.container_path(name))
        # Running containers: init's pid, start time, why init last ended,
        # the addresses read in its network namespace, and resource use.
        if addresses is None:
            addresses = await self.networks.addresses(name)
        run = {**self.lifecycle.run_fields(name), "addresses": addresses}
        if stats in ("read", "read-disk"):
            run["stats"] = await self.resources.stats(name, disk=stats == "read-disk")
        elif stats != "omit":
            run["stats"] = stats
        if name in d.broken:
            return {
                "name": name,
                "template": "",
                "state": str(d.states.get(name, State.ERROR)),
                "created_at": "",
                "config": {},
                "snapshots": snaps,
                "path": path,
                "error": d.broken[name],
                **run,
            }
        c = d.table.require(name)
        return {
            **c.to_json(),
            "security": describe_security(c, d.apparmor),
            "filtering": self.networks.filtering(name, c.config),
            "state": str(d.states[name]),
            "snapshots": snaps,
            "path": path,
            "error": None,
            **run,
        }

    async def list_all(
        self, stats: bool = False, only: Callable[[Iterable[str]], list[str]] | None = None
    ) -> list[dict[str, object]]:
        """GET /1.0/containers; with `stats`, the running ones' stats
        (without disk use), read in one worker-thread trip; `only` picks
        the names to list (the caller's, for a restricted user)."""
        names = sorted(self.d.states if only is None else only(self.d.states))
        # One worker-thread trip for every container's snapshots, not one
        # each: with 100 containers the hops cost more than the listing.
        snaps = await self.d.storage(lambda: [self._snapshot_names(n) for n in names])
        # Addresses from the leases, once per network (see addresses_of).
        addrs = await self.networks.addresses_of(names)
        use = await self.resources.stats_many(names) if stats else {}
        return [
            await self.describe(n, s, use.get(n) if stats else "omit", addrs.get(n, []))
            for n, s in zip(names, snaps, strict=True)
        ]

    async def get(self, name: str) -> dict[str, object]:
        if not self.d.table.known(name):
            self.d.table.require(name)
        return await self.describe(name, stats="read-disk")

    async def stats(self, name: str) -> dict[str, object] | None:
        """GET /1.0/containers/NAME/stats: resource use, null unless it runs."""
        self.d.table.require(name)
        return await self.resources.stats(name, disk=True)

    def _require_stopped(self, name: str, what: str, force: str = "") -> None:
        # `force`: the command that does it anyway, for the hint.
        state = self.d.states.get(name)
        if state not in (State.STOPPED, State.ERROR):
            hint = f"stop it first (`lxpy stop {name}`)"
            raise Busy(
                f"cannot {what} container {name!r} while it is {state}",
                hint=f"{hint}, or use `{force}`" if force else hint,
            )

    # -- create / delete ----------------------------------------------------
    async def create(
        self, body: dict[str, object], owner: Owner, sees: Callable[[str], bool] | None = None
    ) -> dict[str, object]:
        """POST /1.0/containers, by `owner` (who may know of the containers
        `sees` allows). Validates everything before storage is touched.

        Raises:
            InvalidArgument, NotFound (template), AlreadyExists, or a build error.
        """
        d = self.d
        name = validate_name(body.get("name"))
        image = body.get("image")
        if image is not None and body.get("template") is not None:
            raise InvalidArgument("give either 'template' or 'image', not both")
        if image is None:
            template = validate_name(body.get("template"), "template")
        else:
            template = str(parse_image_ref(image))
        raw = body.get("config", {})
        if not isinstance(raw, dict):
            raise InvalidArgument(f"'config' must be an object of key: value, got {raw!r}")
        config = validate_config(raw)
        check_security(config)
        if "network" not in config and d.settings.default_network:
            # New containers join the default network unless told otherwise
            # (`network = []` for none); it is made when one first starts.
            config["network"] = [d.settings.default_network]
        configcheck.check_networks(self.networks, config)
        configcheck.check_address(d, self.networks, name, config, strict=True, sees=sees)
        if image is None:
            await self.templates.find(template)
        d.table.reserve(name)
        try:
            if image is None:
                await self.templates.ensure_built(template)
                where = f"template {template!r}"
            else:
                # Pulled first when it names a remote's image not cached.
                fingerprint, meta = await self.images.ensure(image)
                template = image_volume(fingerprint)
                where = f"image {image}"
                # What the image says its init wants (busybox init's signals)
                # goes into the config, so it holds after the image is deleted.
                defaults = meta.get("defaults")
                for key, value in (defaults if isinstance(defaults, dict) else {}).items():
                    if key in ("halt_signal", "reboot_signal") and key not in config:
                        config[key] = str(value)
            if "init" in config:
                # The container's rootfs will be a snapshot of the template's.
                rootfs = str(d.backend.template_path(template))
                await configcheck.check_init(d, name, rootfs, str(config["init"]), where)
            async with d.journal.begin("create", name=name, template=template) as op:
                await d.storage(d.backend.create_container, name, template)
                self._undo_volume(op, name)
                await self._record_new(op, name, template, config, None, owner)
        finally:
            d.table.unreserve(name)
            await self.security.release(name)
        data: dict[str, object] = {"template": template} if image is None else {"image": str(image)}
        d.bus.lifecycle("container-created", f"containers/{name}", data)
        return await self.describe(name)

    def _undo_volume(self, op: Intent, name: str) -> None:
        d = self.d
        op.undo(lambda: d.storage(d.backend.delete_container, name), f"delete {name}")
        op.step("volume-made")

    async def _record_new(
        self,
        op: Intent,
        name: str,
        template: str,
        config: Mapping[str, object],
        current: IdmapRecord | None,
        owner: Owner,
        base: Container | None = None,
    ) -> None:
        """Save the record of container `name`, whose rootfs was just made
        (in operation `op`), and make it known. `base`: the record it is
        made from (a copy, an import), whose other fields it keeps.

        Unprivileged (the default), it gets a host ID range of its own (or
        the shared one, as configured), kept in the record; a rootfs that
        cannot be idmapped is shifted now.
        """
        d = self.d
        log = d.console_log(name)
        op.undo(lambda: d.files(log.unlink, True), f"remove {log}")
        # Now, not at its first start: that start then finds them made
        # (the hostname files written and in the page cache, the log
        # file's inode allocated). Before the ID range, so a rootfs
        # shifted on disk has them shifted too.
        hostname = str(config.get("hostname") or name)
        rootfs = d.backend.container_path(name)
        await d.files(_first_files, rootfs, name, hostname, log)
        op.step("files-written")
        # Its block is claimed until the caller's release(): published
        # before this returns, dropped again if the record never comes.
        idmap = await self.security.assign(name, config, current, fresh=True)
        op.step("ids-assigned")
        fields = {
            "name": name,
            "template": template,
            "created_at": now_iso(),
            "config": config,
            "idmap": idmap,
            "owner": owner,
        }
        # Whatever else the record holds (devices) goes with it.
        record = Container(**fields) if base is None else replace(base, **fields)  # type: ignore[arg-type]
        await d.files(d.registry.save, record)
        op.step("recorded")
        d.table.put(record)

    async def delete(self, name: str, force: bool) -> dict[str, object]:
        """DELETE /1.0/containers/NAME: the rootfs, its snapshots, its record.

        Raises:
            NotFound, Busy (running, without force).
        """
        d = self.d
        if not d.table.known(name):
            d.table.require(name)
        async with d.table.lock(name):
            if not d.table.known(name):
                d.table.require(name)
            if not force:
                self._require_stopped(name, "delete", f"lxpy destroy --force {name}")
            elif name in self.lifecycle.runs:
                await self.lifecycle.stop_locked(name, 0, force=True)
            # Storage first: if it fails half way the record stays, and a
            # retry (deletes are idempotent) finishes the job. The rootfs
            # leaving its name is the point of no return for recovery.
            gone = d.records.get(name)
            config = gone.config if gone is not None else {}
            async with d.journal.begin("delete", name=name) as op:
                await d.storage(d.backend.delete_container, name, op.step)
                await d.files(d.registry.delete, name)
                op.step("record-deleted")
                await self.networks.release(name, config)
                if gone is not None:
                    await self.devices.forget_all(gone)
                await self.lifecycle.forget(name)
                d.table.forget(name)
            # Its ID block is free again, for every lxpyd on the host.
            await self.security.publish()
        d.bus.lifecycle("container-deleted", f"containers/{name}")
        return {}

    # -- config -------------------------------------------------------------
    async def update_config(
        self, name: str, body: dict[str, object], sees: Callable[[str], bool] | None = None
    ) -> dict[str, object]:
        """PATCH /1.0/containers/NAME/config: `{"set": {...}, "unset": [...]}`,
        by a caller who may know of the containers `sees` allows."""
        d = self.d
        set_ = body.get("set", {})
        unset = body.get("unset", [])
        if not isinstance(set_, dict):
            raise InvalidArgument(f"'set' must be an object of key: value, got {set_!r}")
        if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
            raise InvalidArgument(f"'unset' must be a list of keys, got {unset!r}")
        for key in unset:
            check_key_length(key)
        async with d.table.lock(name):
            old = d.table.require(name)
            new = old.with_config(set_, unset)
            check_update(old, new.config)
            await configcheck.check_change(d, self.networks, name, old.config, new.config, sees)
            running = name in self.lifecycle.runs
            # Limits and port filters of a running container change at once,
            # before the record: a value the kernel refuses is not saved
            # either. Other keys take effect at its next start.
            async with AsyncRevert(f"config of {name}") as rv:
                live = await self.resources.apply_live(name, old.config, new.config)
                if live:
                    rv.undo(
                        lambda: self.resources.apply_live(name, new.config, old.config),
                        f"restore the limits of {name}",
                    )
                filters = await self._refilter(name, old.config, new.config)
                if filters:
                    rv.undo(
                        lambda: self.networks.refilter(name, old.config),
                        f"restore the port filters of {name}",
                    )
                await d.files(d.registry.save, new)
            d.table.put(new)
            if live:
                await self.resources.rebalance()
        d.bus.lifecycle(
            "container-updated",
            f"containers/{name}",
            {"set": list(set_), "unset": unset, "applied": live + filters},
        )
        # What the caller should know: the changes a running container
        # gets only at its next start.
        later = configcheck.deferred(old.config, new.config) if running else []
        return {**await self.describe(name), "deferred": later}

    async def _refilter(
        self, name: str, old: Mapping[str, object], new: Mapping[str, object]
    ) -> list[str]:
        """Give a running container's ports the filters `new` asks for;
        returns the keys that changed on a running container (none: nothing
        done, they apply at its next start)."""
        changed = sorted(k for k in LIVE_KEYS if old.get(k) != new.get(k))
        if changed and await self.networks.refilter(name, new):
            return changed
        return []

    # -- rename / copy ------------------------------------------------------
    async def rename(self, name: str, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/containers/NAME/rename: storage, then the record (undone on failure)."""
        d = self.d
        new = validate_name(body.get("name"))
        async with d.table.lock(name):
            old_record = d.table.require(name)
            self._require_stopped(name, "rename")
            if new == name:
                return await self.describe(name)
            d.table.reserve(new)
            try:
                async with d.journal.begin("rename", name=name, new=new) as op:
                    await d.storage(d.backend.rename_container, name, new, op.step)
                    op.undo(
                        lambda: d.storage(d.backend.rename_container, new, name),
                        f"rename {new} back to {name}",
                    )
                    record = old_record.renamed(new)
                    await d.files(d.registry.rename, name, record, op.step)
                    # Its console log goes with it (the container is renamed
                    # already: a failure here is only logged).
                    try:
                        await d.files(_move_logs, d.console_log(name), d.console_log(new))
                    except (OSError, LxpyError) as e:
                        log.warning("rename %s to %s: console log not moved: %s", name, new, e)
                d.table.rename(name, record)
                # Its NICs' MACs change with its name.
                await self.networks.release(name, old_record.config)
                await self.security.rename(name, new)
            finally:
                d.table.unreserve(new)
        d.bus.lifecycle("container-renamed", f"containers/{new}", {"old": name, "new": new})
        return await self.describe(new)

    async def copy(self, name: str, body: dict[str, object], owner: Owner) -> dict[str, object]:
        """POST /1.0/containers/NAME/copy: a new container from this one's
        rootfs and (unless `instance_only`) its snapshots, made by (and so
        belonging to) `owner`.

        The copy is a new machine: its own /etc/machine-id, its own MACs
        (they follow its name), and no pinned ipv4.address, which stays
        the source's alone (two containers would claim one address).
        """
        d = self.d
        dst = validate_name(body.get("name"))
        instance_only = body.get("instance_only", False)
        if not isinstance(instance_only, bool):
            raise InvalidArgument(f"'instance_only' must be true or false, got {instance_only!r}")
        async with d.table.lock(name):
            src = d.table.require(name)
            config = {k: v for k, v in src.config.items() if k not in COPY_DROPS}
            d.table.reserve(dst)
            try:
                async with d.journal.begin("copy", name=dst, source=name) as op:
                    await d.storage(d.backend.clone_container, name, dst)
                    self._undo_volume(op, dst)
                    if not instance_only:
                        snaps = await d.storage(self._snapshot_names, name)
                        await d.storage(d.backend.copy_snapshots, name, dst, snaps)
                    op.step("snapshots-copied")
                    await d.files(new_machine_id, d.backend.container_path(dst), dst)
                    # A shifted source keeps its files' host IDs: the copy
                    # then starts from the source's range.
                    shifted = src.idmap if src.idmap and src.idmap.method == "shift" else None
                    # Its devices too (Incus copies them: the same host
                    # paths, checked again at its start), and those its
                    # copied snapshots recorded.
                    base = replace(src, snapshot_devices={}) if instance_only else src
                    await self._record_new(op, dst, src.template, config, shifted, owner, base=base)
            finally:
                d.table.unreserve(dst)
                await self.security.release(dst)
        dropped = sorted(k for k in COPY_DROPS if k in src.config)
        d.bus.lifecycle("container-copied", f"containers/{dst}", {"source": name})
        return {**await self.describe(dst), "dropped": dropped}

    # -- snapshots ----------------------------------------------------------
    async def snapshots(self, name: str) -> list[dict[str, object]]:
        self.d.table.require(name)
        infos = await self.d.storage(self.d.backend.list_snapshots, name)
        return [{"name": s.name, "created_at": s.created_at} for s in infos]

    async def create_snapshot(self, name: str, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/containers/NAME/snapshots: `{"name": "s1"}` or the next `snapN`."""
        d = self.d
        wanted = _str_field(body, "name", required=False)
        async with d.table.lock(name):
            d.table.require(name)
            existing = await d.storage(self._snapshot_names, name)
            if wanted is None:
                nums = [int(m.group(1)) for s in existing if (m := re.fullmatch(r"snap(\d+)", s))]
                snap = f"snap{max(nums, default=-1) + 1}"
            else:
                snap = validate_name(wanted, "snapshot")
                if snap in existing:
                    raise AlreadyExists(f"container {name!r} has a snapshot {snap!r} already")
            # Atomic by storage alone (one snapshot, or a copy renamed into
            # place): no intent to write.
            async with d.journal.begin("snapshot", durable=False) as op:
                await d.storage(d.backend.create_snapshot, name, snap)
                op.undo(
                    lambda: d.storage(d.backend.delete_snapshot, name, snap),
                    f"delete snapshot {name}/{snap}",
                )
                op.step("snapshot-made")
                # Its devices, restored with it (one atomic write).
                record = d.table.require(name).with_snapshot(snap, keep=True)
                await d.files(d.registry.save, record)
                d.table.put(record)
            infos = await d.storage(d.backend.list_snapshots, name)
        d.bus.lifecycle("snapshot-created", f"containers/{name}", {"snapshot": snap})
        info = next((s for s in infos if s.name == snap), None)
        return {"name": snap, "created_at": info.created_at if info else now_iso()}

    async def _require_snapshot(self, name: str, snap: str) -> None:
        snaps = await self.d.storage(self._snapshot_names, name)
        if snap not in snaps:
            lister = f"`lxpy snapshot list {name}`"
            raise NotFound(
                f"container {name!r} has no snapshot {snap!r}",
                hint=not_found_hint(snap, snaps, "its snapshots", lister),
            )

    async def restore(
        self, name: str, snap: str, grace: float, force: bool = False
    ) -> dict[str, object]:
        """POST /1.0/containers/NAME/snapshots/SNAP/restore.

        A running (or frozen) container is stopped as `lxpy stop` does (the
        halt signal, killed after `grace` s, at once with `force`),
        restored and started again. Snapshots hold no running state, so
        this is always a stateless restart. As for a restart, what the
        start would refuse (its config, no init in the snapshot) is found
        before it stops. The backend rolls the rootfs back when the
        restore fails, and the container is started again as it was.

        Raises:
            NotFound; Busy (starting or stopping); InvalidArgument, Busy:
            what its start would refuse (it is left running); LxpyError:
            the stop or the restore failed (nothing changed), or the start
            after it (the restored rootfs stays; the message says so).
        """
        d = self.d
        async with d.table.lock(name):
            d.table.require(name)
            await self._require_snapshot(name, snap)
            running = name in self.lifecycle.runs
            if running:
                # What its start would refuse (in its config, or an init
                # missing from the snapshot) is found before it stops.
                await self.lifecycle.check_start(name, snapshot=snap)
                await self.lifecycle.stop_locked(name, grace, force)
            else:
                self._require_stopped(name, "restore")
            # Storage alone settles a crash here (its .restore- name).
            async with d.journal.begin("restore", durable=False) as op:
                if running:
                    op.undo(lambda: self.lifecycle.start_locked(name), f"start {name} again")
                await d.storage(d.backend.restore_snapshot, name, snap, op.step)
                # The devices it was taken with, if it recorded them.
                record = d.table.require(name)
                kept = record.snapshot_devices.get(snap)
                if kept is not None and kept != record.devices:
                    record = replace(record, devices=kept)
                    await d.files(d.registry.save, record)
                    d.table.put(record)
            d.bus.lifecycle("snapshot-restored", f"containers/{name}", {"snapshot": snap})
            if running:
                try:
                    await self.lifecycle.start_locked(name)
                except LxpyError as e:
                    raise type(e)(
                        f"restored container {name!r} to snapshot {snap!r}, "
                        f"but it did not start again: {e.message}",
                        hint=f"the restored files stay and it is stopped; `lxpy start {name}` "
                        "once the cause is fixed" + (f" ({e.hint})" if e.hint else ""),
                    ) from e
                self.lifecycle.restarted(name, f"restarted by lxpy to restore snapshot {snap}")
        return await self.describe(name)

    async def delete_snapshot(self, name: str, snap: str) -> dict[str, object]:
        """DELETE /1.0/containers/NAME/snapshots/SNAP."""
        d = self.d
        async with d.table.lock(name):
            d.table.require(name)
            await self._require_snapshot(name, snap)
            # One rename out of sight, then the delete (its .trash- name).
            async with d.journal.begin("snapshot-delete", durable=False) as op:
                await d.storage(d.backend.delete_snapshot, name, snap)
                op.step("snapshot-deleted")
            record = d.table.require(name)
            if snap in record.snapshot_devices:
                record = record.with_snapshot(snap, keep=False)
                await d.files(d.registry.save, record)
                d.table.put(record)
        d.bus.lifecycle("snapshot-deleted", f"containers/{name}", {"snapshot": snap})
        return {}


def _first_files(rootfs: Path, name: str, hostname: str, log: Path) -> None:
    """What a new container's first start would otherwise make: its
    hostname files and its (empty) console log."""
    with Rootfs(rootfs, f"container {name!r}") as root:
        set_hostname_files(root, hostname)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))


def new_machine_id(rootfs: Path, name: str) -> None:
    """Give a copied rootfs its own /etc/machine-id: a new random one where
    the source had one, none (systemd makes one at first boot) where it
    had none. The D-Bus copy, a file of its own, follows it."""
    with Rootfs(rootfs, f"container {name!r}") as root:
        old = root.read_text("etc/machine-id", cap=4096) if root.is_file("etc/machine-id") else None
        if old is None:
            return
        root.remove("etc/machine-id")
        root.write("etc/machine-id", secrets.token_hex(16) + "\n" if old.strip() else "", 0o444)
        dbus_id = "var/lib/dbus/machine-id"
        entry = root.stat(dbus_id, follow=False)
        if entry is not None and stat.S_ISREG(entry.st_mode):
            root.remove(dbus_id)
            root.symlink(dbus_id, "/etc/machine-id")


def _move_logs(old: Path, new: Path) -> None:
    """Move a container's console log (and its rotated part) to a new name."""
    for src, dst in ((old, new), (rotated_log(old), rotated_log(new))):
        if src.exists():
            src.replace(dst)
