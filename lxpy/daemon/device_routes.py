"""The API routes of devices and custom volumes (docs/api.md)."""

from __future__ import annotations

from lxpy.daemon import openapi
from lxpy.daemon.devices.service import Devices
from lxpy.daemon.http import Request, Router
from lxpy.daemon.volumes import Volumes

S = openapi.ref


def add_device_routes(r: Router, devices: Devices) -> None:
    """GET/POST /1.0/containers/NAME/devices, GET/DELETE .../devices/DEV."""

    async def list_devices(req: Request) -> object:
        return devices.list(req.params["name"])

    async def add_device(req: Request) -> object:
        return await devices.add(req.params["name"], req.json())

    async def get_device(req: Request) -> object:
        return devices.get(req.params["name"], req.params["dev"])

    async def remove_device(req: Request) -> object:
        return await devices.remove(req.params["name"], req.params["dev"])

    C = "/1.0/containers/{name}/devices"
    r.add("GET", C, list_devices, "List a container's devices", response=openapi.array(S("Device")))
    r.add(
        "POST",
        C,
        add_device,
        "Add a device (a running container gets it at once, or the type says it cannot)",
        status=201,
        body=openapi.DEVICE_BODY,
        response=S("Device"),
    )
    r.add("GET", C + "/{dev}", get_device, "Show a device", response=S("Device"))
    r.add(
        "DELETE",
        C + "/{dev}",
        remove_device,
        "Remove a device (from a running container at once)",
        response=openapi.EMPTY,
    )


def add_volume_routes(r: Router, volumes: Volumes) -> None:
    """GET/POST /1.0/volumes, GET/DELETE /1.0/volumes/NAME."""

    async def list_volumes(req: Request) -> object:
        return await volumes.list_all()

    async def create_volume(req: Request) -> object:
        return await volumes.create(req.json())

    async def get_volume(req: Request) -> object:
        return await volumes.get(req.params["name"])

    async def delete_volume(req: Request) -> object:
        return await volumes.delete(req.params["name"])

    r.add(
        "GET",
        "/1.0/volumes",
        list_volumes,
        "List custom volumes",
        response=openapi.array(S("Volume")),
    )
    r.add(
        "POST",
        "/1.0/volumes",
        create_volume,
        "Create an empty custom volume (a disk device with pool=default source=NAME mounts it)",
        status=201,
        body=openapi.NAME_BODY,
        response=S("Volume"),
    )
    r.add("GET", "/1.0/volumes/{name}", get_volume, "Show a custom volume", response=S("Volume"))
    r.add(
        "DELETE",
        "/1.0/volumes/{name}",
        delete_volume,
        "Delete a custom volume with its files (busy while a container's disk uses it)",
        response=openapi.EMPTY,
    )
