"""The API routes of running containers (docs/api.md, "Running containers"):
start, stop, restart, freeze, unfreeze, the console log, stats and stop-all."""

from __future__ import annotations

import math

from lxpy.daemon import openapi
from lxpy.daemon.assemble import Services
from lxpy.daemon.http import TEXT_TYPE, Request, Router, Text
from lxpy.daemon.lifecycle import DEFAULT_STOP_TIMEOUT
from lxpy.daemon.readiness import DEFAULT_WAIT_TIMEOUT, wait_ready
from lxpy.errors import InvalidArgument

STOP_PROPERTIES = {
    "timeout": {"type": "number", "default": DEFAULT_STOP_TIMEOUT, "minimum": 0},
    "force": {"type": "boolean", "default": False},
}
STOP_BODY = {"type": "object", "properties": STOP_PROPERTIES}
# Start and restart may wait until the container is ready (lxpy.daemon.readiness).
WAIT_PROPERTIES = {
    "wait": {"type": "boolean", "default": False},
    "wait_timeout": {"type": "number", "default": DEFAULT_WAIT_TIMEOUT, "minimum": 0},
}
START_BODY = {"type": "object", "properties": WAIT_PROPERTIES}
RESTART_BODY = {"type": "object", "properties": {**STOP_PROPERTIES, **WAIT_PROPERTIES}}


def stop_args(body: dict[str, object]) -> tuple[float, bool]:
    """The timeout and force of a request body shaped as STOP_BODY."""
    timeout = body.get("timeout", DEFAULT_STOP_TIMEOUT)
    force = body.get("force", False)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise InvalidArgument(f"'timeout' must be a number of seconds >= 0, got {timeout!r}")
    if not isinstance(force, bool):
        raise InvalidArgument(f"'force' must be true or false, got {force!r}")
    return float(timeout), force


def _wait_args(body: dict[str, object]) -> float | None:
    # How long to wait for the container to be ready; None: not at all.
    wait = body.get("wait", False)
    timeout = body.get("wait_timeout")
    if not isinstance(wait, bool):
        raise InvalidArgument(f"'wait' must be true or false, got {wait!r}")
    if timeout is None:
        return DEFAULT_WAIT_TIMEOUT if wait else None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise InvalidArgument(f"'wait_timeout' must be a number of seconds >= 0, got {timeout!r}")
    if not wait:
        raise InvalidArgument("'wait_timeout' needs 'wait': true", hint='send {"wait": true, ...}')
    return float(timeout)


def add_lifecycle_routes(r: Router, s: Services) -> None:
    """POST start/stop/restart/freeze/unfreeze and GET console/log of a container."""
    life, containers = s.lifecycle, s.containers
    C = "/1.0/containers/{name}"
    container = openapi.ref("Container")

    # Start and restart answer without stats, and with no addresses: a
    # moment after init's exec the stats say nothing and DHCP has not run,
    # and reading them (a worker thread each, one entering the network
    # namespace) competes with the boot for CPU. After a wait for
    # readiness the addresses are there, and are read.
    async def answer(name: str, wait: float | None) -> dict[str, object]:
        if wait is None:
            return await containers.describe(name, stats="omit", addresses=[])
        await wait_ready(life, s.networks, name, wait)
        return await containers.describe(name, stats="omit")

    async def start(req: Request) -> object:
        # A running container is left as it is: `started` says which. A
        # wait waits for it all the same: its caller wants it ready.
        wait = _wait_args(req.json())
        started = await life.start(req.params["name"])
        return {**await answer(req.params["name"], wait), "started": started}

    async def stop(req: Request) -> object:
        timeout, force = stop_args(req.json())
        await life.stop(req.params["name"], timeout, force)
        return await containers.describe(req.params["name"])

    async def restart(req: Request) -> object:
        timeout, _force = stop_args(req.json())
        wait = _wait_args(req.json())
        await life.restart(req.params["name"], timeout)
        return await answer(req.params["name"], wait)

    async def freeze(req: Request) -> object:
        await life.freeze(req.params["name"], True)
        return await containers.describe(req.params["name"])

    async def unfreeze(req: Request) -> object:
        await life.freeze(req.params["name"], False)
        return await containers.describe(req.params["name"])

    async def console_log(req: Request) -> object:
        return Text(await life.console_log(req.params["name"]))

    async def stats(req: Request) -> object:
        return await containers.stats(req.params["name"])

    async def stop_all(req: Request) -> object:
        timeout, _force = stop_args(req.json())
        return await s.boot.stop_all(timeout)

    r.add(
        "POST",
        C + "/start",
        start,
        "Start a container: once init runs, or with `wait` once it is ready; a running "
        "one is left as it is",
        body=START_BODY,
        response=openapi.START_ANSWER,
    )
    r.add(
        "POST",
        C + "/stop",
        stop,
        "Stop a container: the halt signal, then kill after the timeout",
        body=STOP_BODY,
        response=container,
    )
    r.add(
        "POST",
        C + "/restart",
        restart,
        "Stop (if running) and start a container; with `wait`, once it is ready",
        body=RESTART_BODY,
        response=container,
    )
    r.add("POST", C + "/freeze", freeze, "Freeze every process of a container", response=container)
    r.add("POST", C + "/unfreeze", unfreeze, "Thaw a frozen container", response=container)
    r.add(
        "GET",
        C + "/stats",
        stats,
        "Resource use of a running container (null when it is not running)",
        response={"oneOf": [{"type": "null"}, openapi.ref("Stats")]},
    )
    r.add(
        "POST",
        "/1.0/containers/stop-all",
        stop_all,
        "Stop every running container, higher boot.stop_priority first (host shutdown)",
        body=STOP_BODY,
        response=openapi.STOP_ALL,
    )
    r.add(
        "GET",
        C + "/console/log",
        console_log,
        "The console output kept since boot (text/plain)",
        response={"type": "string"},
        media=TEXT_TYPE,
    )
