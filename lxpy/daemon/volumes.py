"""Custom volumes: btrfs subvolumes of lxpy's own in the pool (volumes/NAME),
for data that outlives a container. A `disk` device with `pool=default
source=NAME` mounts one (lxpy.daemon.devices.disk).

A volume is not part of any container: destroying a container leaves its
volumes, and a container's snapshots do not hold them (as Incus's custom
volumes are not snapshotted with an instance). One in use by a
container's disk cannot be deleted. Create and delete are one storage
step each (the delete renames out of sight first), so no intent is
written.
"""

from __future__ import annotations

from lxpy.daemon.state import Daemon
from lxpy.errors import Busy, NotFound
from lxpy.model.names import validate_name
from lxpy.model.suggest import not_found_hint


class Volumes:
    def __init__(self, d: Daemon) -> None:
        self.d = d

    def used_by(self, name: str) -> list[str]:
        """The containers with a disk on volume `name`."""
        return sorted(
            c.name
            for c in self.d.records.values()
            if any(
                o.get("type") == "disk" and o.get("pool") and o.get("source") == name
                for o in c.devices.values()
            )
        )

    def describe(self, name: str) -> dict[str, object]:
        """The API's volume object."""
        return {
            "name": name,
            "pool": "default",
            "path": str(self.d.backend.volume_path(name)),
            "used_by": self.used_by(name),
        }

    async def list_all(self) -> list[dict[str, object]]:
        """GET /1.0/volumes."""
        names = await self.d.storage(self.d.backend.list_volumes)
        return [self.describe(n) for n in names]

    async def require(self, name: str) -> None:
        """Raises NotFound (with the nearest names) when volume `name` does not exist."""
        if not await self.d.storage(self.d.backend.volume_exists, name):
            names = await self.d.storage(self.d.backend.list_volumes)
            raise NotFound(
                f"volume {name!r} not found",
                hint=not_found_hint(name, names, "volumes", "`lxpy volume list`"),
            )

    async def get(self, name: str) -> dict[str, object]:
        """GET /1.0/volumes/NAME."""
        await self.require(validate_name(name, "volume"))
        return self.describe(name)

    async def create(self, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/volumes: `{"name": NAME}`, an empty volume.

        Raises:
            InvalidArgument; AlreadyExists.
        """
        name = validate_name(body.get("name"), "volume")
        await self.d.storage(self.d.backend.create_volume, name)
        self.d.bus.lifecycle("volume-created", f"volumes/{name}")
        return self.describe(name)

    async def delete(self, name: str) -> dict[str, object]:
        """DELETE /1.0/volumes/NAME, with its files.

        Raises:
            NotFound; Busy: a container's disk uses it.
        """
        name = validate_name(name, "volume")
        await self.require(name)
        users = self.used_by(name)
        if users:
            raise Busy(
                f"volume {name!r} is in use by {', '.join(users)}",
                hint="remove their disk on it first (`lxpy device remove CONTAINER DEV`)",
            )
        await self.d.storage(self.d.backend.delete_volume, name)
        self.d.bus.lifecycle("volume-deleted", f"volumes/{name}")
        return {}
