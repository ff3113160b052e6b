"""`proxy` devices: a host port published to a port inside the container.

    lxpy device add web http proxy listen=tcp:0.0.0.0:8080 connect=tcp:127.0.0.1:80
    lxpy device add web dns proxy listen=udp:0.0.0.0:5353 connect=udp:10.87.0.12:53

Keys (docs/devices.md): `listen` (PROTO:ADDR:PORT on the host) and
`connect` (PROTO:ADDR:PORT inside the container; 127.0.0.1 is its own
loopback).

lxpyd binds the host port when the container starts (a port already taken
fails the start, naming it) and forwards what reaches it from inside the
container's network namespace (lxpy.daemon.proxyd). When `connect` is an
address other than loopback (the container's address on its network), the
daemon root's DNAT table (lxpy.network.proxy) carries every connection
that does not come from the host's loopback, keeping the client's source
address. The port is freed and the rule removed on stop and on removal.
After an lxpyd restart, the adopted container's proxies are made again.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import ClassVar

import trio

from lxpy.daemon.devices.base import Dev, DeviceHost, DeviceType, Key, StartPlan
from lxpy.daemon.proxyd import Forwarder
from lxpy.errors import Busy, InvalidArgument, Unsupported
from lxpy.model.network import root_id
from lxpy.network import proxy
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.devices")

Slot = tuple[str, str]  # container, device


def _endpoint(key: str, value: str) -> str:
    return str(proxy.parse_endpoint(key, value))


class Proxy(DeviceType):
    NAME = "proxy"
    DOC = "a host port forwarded to a port inside the container (published port)"
    HOTPLUG = True
    KEYS: ClassVar[Mapping[str, Key]] = {
        "listen": Key(_endpoint, "tcp:ADDR:PORT or udp:ADDR:PORT on the host", required=True),
        "connect": Key(
            _endpoint,
            "tcp:ADDR:PORT or udp:ADDR:PORT inside the container (127.0.0.1: its loopback)",
            required=True,
        ),
    }

    def __init__(self) -> None:
        # Ports bound for a start, until init runs.
        self.held: dict[Slot, socket.socket] = {}
        self.forwarders: dict[Slot, Forwarder] = {}
        self.rules: dict[Slot, proxy.Dnat] = {}

    def check_options(self, dev: str, options: Mapping[str, str]) -> None:
        try:
            proxy.parse_pair(options["listen"], options["connect"])
        except InvalidArgument as e:
            raise InvalidArgument(f"device {dev!r}: {e.message}", e.hint) from None

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        return "proxy devices take ports on the host"

    def describe(self, dev: Dev) -> str:
        return f"{dev.options['listen']} -> {dev.options['connect']}"

    async def check(self, h: DeviceHost, dev: Dev) -> None:
        lst, _ = proxy.parse_pair(dev.options["listen"], dev.options["connect"])
        for name, record in h.d.records.items():
            for other, o in record.devices.items():
                if (name, other) == (dev.container, dev.name) or o.get("type") != self.NAME:
                    continue
                theirs = proxy.parse_endpoint("listen", o["listen"])
                if _clash(lst, theirs):
                    raise Busy(
                        f"device {dev.name!r}: listen {lst} clashes with device {other!r} "
                        f"of container {name!r} ({theirs})",
                        hint="pick another listen port",
                    )
        # Free on the host now (a running container's own proxy holds its
        # port: it clashed above already).
        s = await trio.to_thread.run_sync(proxy.bind, lst)
        s.close()

    async def start(self, h: DeviceHost, dev: Dev, plan: StartPlan) -> None:
        slot = (dev.container, dev.name)
        lst, _ = proxy.parse_pair(dev.options["listen"], dev.options["connect"])
        try:
            self.held[slot] = await trio.to_thread.run_sync(proxy.bind, lst)
        except Busy as e:
            raise Busy(f"listen: {e.message}", e.hint) from None

        async def release() -> None:
            s = self.held.pop(slot, None)
            if s is not None:
                s.close()

        plan.undos.undo(release, f"free port {lst}")
        plan.active.add(dev.name)

    async def started(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        sock = self.held.pop((dev.container, dev.name), None)
        await self._run(h, dev, pid, sock)

    async def plug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self._run(h, dev, pid, None)

    async def adopted(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self._run(h, dev, pid, None)

    async def _run(self, h: DeviceHost, dev: Dev, pid: int, sock: socket.socket | None) -> None:
        slot = (dev.container, dev.name)
        lst, con = proxy.parse_pair(dev.options["listen"], dev.options["connect"])
        if sock is None:
            sock = await trio.to_thread.run_sync(proxy.bind, lst)
        # The bound namespace of a container on a network outlives its init
        # (a reboot inside keeps it): the forwarder keeps reaching it.
        bound = h.networks.netns_path(dev.container)
        netns = bound if await trio.to_thread.run_sync(bound.exists) else proxy.netns_of(pid)
        fwd = Forwarder(f"{dev.container}/{dev.name}", sock, con, str(netns))

        async def stop_forwarder() -> None:
            fwd.close()
            self.forwarders.pop(slot, None)

        async def drop_rule() -> None:
            self.rules.pop(slot, None)

        async with AsyncRevert(dev.label) as rv:
            await h.nursery.start(fwd.run)
            self.forwarders[slot] = fwd
            rv.undo(stop_forwarder, f"stop the forwarder of {dev.label}")
            if proxy.dnat_possible(con):
                self.rules[slot] = proxy.Dnat(dev.container, dev.name, lst, con.addr, con.port)
                rv.undo(drop_rule, f"drop the DNAT rule of {dev.label}")
                await self._apply(h)

    async def unplug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self.stop(h, dev)

    async def stop(self, h: DeviceHost, dev: Dev) -> None:
        slot = (dev.container, dev.name)
        held = self.held.pop(slot, None)
        if held is not None:
            held.close()
        fwd = self.forwarders.pop(slot, None)
        if fwd is not None:
            fwd.close()
        if self.rules.pop(slot, None) is not None:
            await self._apply(h)

    async def forget(self, h: DeviceHost, dev: Dev) -> None:
        await self.stop(h, dev)

    async def daemon_ready(self, h: DeviceHost) -> None:
        # The table as the adopted containers' proxies say: rules of a
        # container that ended while no lxpyd ran go.
        try:
            await self._apply(h)
        except Unsupported:
            if self.rules:
                raise

    async def _apply(self, h: DeviceHost) -> None:
        table = proxy.table_name(root_id(str(h.d.settings.root)))
        rules = list(self.rules.values())
        await trio.to_thread.run_sync(proxy.apply, table, rules)


def _clash(a: proxy.Endpoint, b: proxy.Endpoint) -> bool:
    # The same protocol and port on the same address, or either on all.
    return (
        a.proto == b.proto and a.port == b.port and (a.addr == b.addr or a.wildcard or b.wildcard)
    )
