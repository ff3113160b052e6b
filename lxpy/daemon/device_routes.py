"""The API routes of devices (docs/api.md, "Devices")."""

from __future__ import annotations

from lxpy.daemon import openapi
from lxpy.daemon.http import Request, Router
from lxpy.daemon.service import Daemon

S = openapi.ref


def add_device_routes(r: Router, d: Daemon) -> None:
    """GET/POST /1.0/containers/NAME/devices, GET/DELETE .../devices/DEV."""

    async def list_devices(req: Request) -> object:
        return d.devices.list(req.params["name"])

    async def add_device(req: Request) -> object:
        return await d.devices.add(req.params["name"], req.json())

    async def get_device(req: Request) -> object:
        return d.devices.get(req.params["name"], req.params["dev"])

    async def remove_device(req: Request) -> object:
        return await d.devices.remove(req.params["name"], req.params["dev"])

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
