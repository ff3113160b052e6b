"""The API's route table (docs/api.md): HTTP requests to service calls.

The table carries the summary and the body and answer schemas of each route,
so GET /1.0/openapi.json is built from the same table that serves requests.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from functools import partial

import trio

from lxpy.daemon import openapi
from lxpy.daemon.assemble import Services
from lxpy.daemon.backups import add_backup_routes
from lxpy.daemon.device_routes import add_device_routes, add_volume_routes
from lxpy.daemon.events import EVENT_TYPES
from lxpy.daemon.http import Request, Router, Send, Stream
from lxpy.daemon.httpread import Limits
from lxpy.daemon.image_routes import add_image_routes
from lxpy.daemon.lifecycle_routes import STOP_BODY, add_lifecycle_routes, stop_args
from lxpy.daemon.networks import Networks
from lxpy.daemon.peers import Groups
from lxpy.daemon.policy import Policy, owner_of
from lxpy.daemon.streams import add_stream_routes
from lxpy.errors import InvalidArgument
from lxpy.model.network import MAX_IFNAME

S = openapi.ref


def _timeout(req: Request) -> float | None:
    raw = req.query.get("timeout")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"timeout: expected seconds, got {raw!r}") from None
    if value < 0:
        raise InvalidArgument(f"timeout: must not be negative, got {raw!r}")
    return value


def build_router(s: Services) -> Router:
    """Every endpoint of API 1.0, bound to the subsystems `s` of a daemon,
    with the access policy (lxpy.daemon.policy) judging each request."""
    d = s.state
    conf = d.settings
    r = Router(
        Groups(conf.admin_group, conf.user_group),
        Limits(idle=conf.http_idle_timeout, request=conf.http_request_timeout),
    )
    policy = Policy(lambda: d.records)
    r.authorize = policy.authorize
    templates, images, containers = s.templates, s.images, s.containers
    ops = d.ops

    # -- server -------------------------------------------------------------
    async def info(req: Request) -> object:
        return await d.info()

    async def spec(req: Request) -> object:
        return openapi.document(r)

    r.add("GET", "/1.0", info, "Server information", response=S("Info"))
    r.add("GET", "/1.0/openapi.json", spec, "This OpenAPI document", response={"type": "object"})

    # -- templates ----------------------------------------------------------
    async def list_templates(req: Request) -> object:
        return await templates.list_all()

    async def get_template(req: Request) -> object:
        return await templates.get(req.params["name"])

    async def build_template(req: Request) -> object:
        body = req.json()
        refresh = False
        for key in ("refresh", "force"):
            value = body.get(key, False)
            if not isinstance(value, bool):
                raise InvalidArgument(f"{key!r} must be true or false, got {value!r}")
            # "force" is the older name of "refresh": either builds afresh
            # from the mirror, bypassing the build cache.
            refresh = refresh or value
        op = await templates.start_build(req.params["name"], refresh)
        return op.to_json()

    async def delete_template(req: Request) -> object:
        await templates.delete(req.params["name"])
        return {}

    r.add(
        "GET",
        "/1.0/templates",
        list_templates,
        "List templates",
        response=openapi.array(S("Template")),
    )
    r.add("GET", "/1.0/templates/{name}", get_template, "Show a template", response=S("Template"))
    r.add(
        "POST",
        "/1.0/templates/{name}/build",
        build_template,
        "Build a template (cached unless its definition changed, or refresh)",
        status=202,
        body=openapi.BUILD_BODY,
        response=S("Operation"),
    )
    r.add(
        "DELETE",
        "/1.0/templates/{name}",
        delete_template,
        "Delete a built template",
        response=openapi.EMPTY,
    )

    add_image_routes(r, images)

    # -- containers ---------------------------------------------------------
    async def list_containers(req: Request) -> object:
        only = partial(policy.visible, req.caller) if req.caller.restricted else None
        return await containers.list_all(stats=req.flag("stats"), only=only)

    def sees(req: Request) -> Callable[[str], bool]:
        # The containers a check may name to this caller.
        return partial(policy.sees, req.caller)

    async def create_container(req: Request) -> object:
        return await containers.create(req.json(), owner_of(req.caller), sees(req))

    async def get_container(req: Request) -> object:
        return await containers.get(req.params["name"])

    async def delete_container(req: Request) -> object:
        return await containers.delete(req.params["name"], req.flag("force"))

    async def patch_config(req: Request) -> object:
        return await containers.update_config(req.params["name"], req.json(), sees(req))

    async def rename(req: Request) -> object:
        return await containers.rename(req.params["name"], req.json())

    async def copy(req: Request) -> object:
        return await containers.copy(req.params["name"], req.json(), owner_of(req.caller))

    C = "/1.0/containers/{name}"
    r.add(
        "GET",
        "/1.0/containers",
        list_containers,
        "List containers",
        query=(("stats", "1 to add the running ones' stats (without disk use)"),),
        response=openapi.array(S("Container")),
    )
    r.add(
        "POST",
        "/1.0/containers",
        create_container,
        "Create a container from a template (built first if needed) or an image (pulled "
        "first if needed)",
        status=201,
        body=openapi.CREATE_BODY,
        response=S("Container"),
    )
    r.add("GET", C, get_container, "Show a container", response=S("Container"))
    r.add(
        "DELETE",
        C,
        delete_container,
        "Delete a container with its snapshots",
        query=(("force", "1 to delete a running container"),),
        response=openapi.EMPTY,
    )
    r.add(
        "PATCH",
        C + "/config",
        patch_config,
        "Set and unset config keys (what a value names is checked now)",
        body=openapi.CONFIG_BODY,
        response=openapi.CONFIG_ANSWER,
    )
    r.add(
        "POST",
        C + "/rename",
        rename,
        "Rename a stopped container",
        body=openapi.NAME_BODY,
        response=S("Container"),
    )
    r.add(
        "POST",
        C + "/copy",
        copy,
        "Copy a container with its snapshots (not with instance_only) as a new machine: "
        "its own machine-id and MACs, no pinned ipv4.address",
        status=201,
        body=openapi.COPY_BODY,
        response=S("Container"),
    )

    # -- snapshots ----------------------------------------------------------
    async def list_snapshots(req: Request) -> object:
        return await containers.snapshots(req.params["name"])

    async def create_snapshot(req: Request) -> object:
        return await containers.create_snapshot(req.params["name"], req.json())

    async def restore(req: Request) -> object:
        timeout, force = stop_args(req.json())
        return await containers.restore(req.params["name"], req.params["snap"], timeout, force)

    async def delete_snapshot(req: Request) -> object:
        return await containers.delete_snapshot(req.params["name"], req.params["snap"])

    r.add(
        "GET",
        C + "/snapshots",
        list_snapshots,
        "List a container's snapshots",
        response=openapi.array(S("Snapshot")),
    )
    r.add(
        "POST",
        C + "/snapshots",
        create_snapshot,
        "Snapshot a container",
        status=201,
        body=openapi.SNAPSHOT_BODY,
        response=S("Snapshot"),
    )
    r.add(
        "POST",
        C + "/snapshots/{snap}/restore",
        restore,
        "Restore a container to a snapshot; a running one is stopped, restored and "
        "started again (snapshots hold no running state)",
        body=STOP_BODY,
        response=S("Container"),
    )
    r.add(
        "DELETE",
        C + "/snapshots/{snap}",
        delete_snapshot,
        "Delete a snapshot",
        response=openapi.EMPTY,
    )

    # -- operations ---------------------------------------------------------
    async def list_ops(req: Request) -> object:
        return [op.to_json() for op in ops.list()]

    async def get_op(req: Request) -> object:
        return ops.get(req.params["id"]).to_json()

    async def wait_op(req: Request) -> object:
        op = ops.get(req.params["id"])
        timeout = _timeout(req)
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            await op.done.wait()
        return op.to_json()

    async def stream_op(req: Request) -> object:
        op = ops.get(req.params["id"])

        async def produce(send: Send) -> None:
            async with aclosing(op.follow()) as items:
                async for item in items:
                    await send(item)

        return Stream(produce)

    async def cancel_op(req: Request) -> object:
        ops.cancel(req.params["id"])
        return {}

    O = "/1.0/operations/{id}"  # noqa: E741
    r.add(
        "GET",
        "/1.0/operations",
        list_ops,
        "List recent and running operations",
        response=openapi.array(S("Operation")),
    )
    r.add("GET", O, get_op, "Show an operation", response=S("Operation"))
    r.add(
        "GET",
        O + "/wait",
        wait_op,
        "Wait until an operation ends (or the timeout)",
        query=(("timeout", "seconds to wait at most"),),
        response=S("Operation"),
    )
    r.add(
        "GET",
        O + "/stream",
        stream_op,
        "Follow an operation: its log so far and new lines, progress, then the operation",
        stream=True,
        response=S("OperationStreamItem"),
    )
    r.add("DELETE", O, cancel_op, "Cancel an operation", response=openapi.EMPTY)

    # -- events -------------------------------------------------------------
    async def events(req: Request) -> object:
        raw = req.query.get("type", "")
        types = [t for t in raw.split(",") if t] or list(EVENT_TYPES)
        for t in types:
            if t not in EVENT_TYPES:
                raise InvalidArgument(
                    f"unknown event type {t!r}", hint="types: " + ", ".join(EVENT_TYPES)
                )

        # Subscribed before the answer starts: a client that sees the headers
        # and then acts sees the events of what it did.
        sub = d.bus.subscribe(types)
        wanted = policy.event_filter(req.caller)

        async def produce(send: Send) -> None:
            async for event in sub.channel:
                if wanted(event):
                    await send(event)

        return Stream(produce, sub.close)

    r.add(
        "GET",
        "/1.0/events",
        events,
        "Follow the event stream",
        query=(("type", "comma-separated event types: lifecycle, operation"),),
        stream=True,
        response=S("Event"),
    )
    add_network_routes(r, s.networks, policy)
    add_lifecycle_routes(r, s)
    add_device_routes(r, s.devices)
    add_volume_routes(r, s.volumes)
    add_stream_routes(r, d)
    add_backup_routes(r, s.backups)
    return r


def add_network_routes(r: Router, networks: Networks, policy: Policy) -> None:
    """The /1.0/networks endpoints (managed bridges)."""
    nets = networks
    network_obj: dict[str, object] = {"type": "object", "additionalProperties": True}

    def macs(container: str) -> list[str]:
        return [n.mac for n in nets.attached.get(container, ())]

    async def list_networks(req: Request) -> object:
        return [policy.network_view(req.caller, n, macs) for n in await nets.list_all()]

    async def create_network(req: Request) -> object:
        body = req.json()
        subnet = body.get("subnet")
        if subnet is not None and not isinstance(subnet, str):
            raise InvalidArgument(f"'subnet' must be a string, got {subnet!r}")
        nat = body.get("nat", True)
        if not isinstance(nat, bool):
            raise InvalidArgument(f"'nat' must be true or false, got {nat!r}")
        return await nets.create(body.get("name"), subnet, nat)

    async def get_network(req: Request) -> object:
        return policy.network_view(req.caller, await nets.info(req.params["name"]), macs)

    async def delete_network(req: Request) -> object:
        await nets.delete(req.params["name"])
        return {}

    r.add(
        "GET",
        "/1.0/networks",
        list_networks,
        "List managed networks",
        response=openapi.array(network_obj),
    )
    r.add(
        "POST",
        "/1.0/networks",
        create_network,
        "Create a managed network (bridge, DHCP/DNS, NAT)",
        status=201,
        body={
            "type": "object",
            "properties": {
                "name": {**openapi.NAME, "maxLength": MAX_IFNAME},
                "subnet": {
                    "type": ["string", "null"],
                    "description": "IPv4 CIDR, or auto (as are null, absent and empty)",
                },
                "nat": {"type": "boolean", "default": True},
            },
            "required": ["name"],
        },
        response=network_obj,
    )
    r.add("GET", "/1.0/networks/{name}", get_network, "Show a network", response=network_obj)
    r.add(
        "DELETE",
        "/1.0/networks/{name}",
        delete_network,
        "Delete an unused network",
        response=openapi.EMPTY,
    )
