"""The userspace path of published ports: a small TCP/UDP forwarder in lxpyd.

One Forwarder per proxy device of a running container. It owns the host's
listening socket (lxpy.network.proxy.bind: holding it keeps the port taken),
and for each client opens a socket inside the container's network
namespace, so it reaches the container's own loopback as well as its
addresses. DNAT (lxpy.network.proxy.render) takes the traffic it can before
it reaches this socket; what is left here is loopback traffic and proxies
to `connect=...127.0.0.1`.

The forwarders live in lxpyd's nursery: an lxpyd restart closes them, and
the next lxpyd makes them again when it adopts the running containers
(Devices re-applies the proxies of each adopted container). The DNAT rules
are kernel state and carry non-loopback traffic on meanwhile; a client on
the host's loopback is refused until the new lxpyd has adopted the
container (about the time of an lxpyd start).
"""

from __future__ import annotations

import logging
import socket

import trio

from lxpy.network.proxy import Endpoint, sockets_in_netns

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
# Unconnected sockets made ahead in the container's network namespace.
_STOCK = 16
# A UDP "session" (one client address) is forgotten after this long
# without a datagram either way, as conntrack forgets an unreplied flow.
UDP_IDLE = 60.0


class Forwarder:
    """Forwards what reaches `listener` to `connect` inside the network
    namespace at `netns`. Run it with `await nursery.start(fwd.run)`; end it
    with `close()` (the port is free once that returns)."""

    def __init__(self, name: str, listener: socket.socket, connect: Endpoint, netns: str) -> None:
        self.name = name
        self.connect = connect
        self.netns = netns
        self._listener = trio.socket.from_stdlib_socket(listener)
        self._scope = trio.CancelScope()
        self._stock: dict[int, list[socket.socket]] = {}
        self.clients = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    if self.connect.proto == "tcp":
                        await self._serve_tcp(nursery)
                    else:
                        await self._serve_udp(nursery)
        finally:
            self._listener.close()
            for stock in self._stock.values():
                for s in stock:
                    s.close()
            self._stock.clear()

    def close(self) -> None:
        """Stop accepting, end every connection and free the port."""
        self._scope.cancel()
        # Closed now (not when the task notices): the port is free at once.
        self._listener.close()

    async def _inner(self, sock_type: int) -> trio.socket.SocketType:
        # Sockets are made in the container's namespace ahead, a batch at a
        # time: entering it costs a thread (about a millisecond), which
        # every new connection would otherwise wait for.
        stock = self._stock.setdefault(sock_type, [])
        if not stock:
            stock += await trio.to_thread.run_sync(sockets_in_netns, self.netns, sock_type, _STOCK)
        return trio.socket.from_stdlib_socket(stock.pop())

    # -- TCP --------------------------------------------------------------------
    async def _serve_tcp(self, nursery: trio.Nursery) -> None:
        while True:
            conn, _addr = await self._listener.accept()
            nursery.start_soon(self._tcp_client, conn)

    async def _tcp_client(self, conn: trio.socket.SocketType) -> None:
        self.clients += 1
        with conn:
            try:
                inner = await self._inner(socket.SOCK_STREAM)
            except OSError as e:
                log.warning("proxy %s: cannot reach the container: %s", self.name, e)
                return
            with inner:
                try:
                    await inner.connect((self.connect.addr, self.connect.port))
                except OSError as e:
                    # The client sees its connection closed, as with DNAT
                    # it would see it refused.
                    log.info("proxy %s: %s refused: %s", self.name, self.connect, e)
                    return
                for s in (conn, inner):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with trio.open_nursery() as n:
                    n.start_soon(_pump, conn, inner)
                    n.start_soon(_pump, inner, conn)

    # -- UDP --------------------------------------------------------------------
    async def _serve_udp(self, nursery: trio.Nursery) -> None:
        sessions: dict[tuple[str, int], trio.socket.SocketType] = {}
        while True:
            data, client = await self._listener.recvfrom(65535)
            inner = sessions.get(client)
            if inner is None:
                try:
                    inner = await self._inner(socket.SOCK_DGRAM)
                    await inner.connect((self.connect.addr, self.connect.port))
                except OSError as e:
                    log.warning("proxy %s: cannot reach the container: %s", self.name, e)
                    continue
                sessions[client] = inner
                self.clients += 1
                nursery.start_soon(self._udp_replies, inner, client, sessions)
            try:
                await inner.send(data)
            except OSError as e:
                # ICMP unreachable from the container comes back as
                # ECONNREFUSED on the next send: the datagram is dropped,
                # as a host with nothing on the port would drop it.
                log.debug("proxy %s: datagram to %s dropped: %s", self.name, self.connect, e)

    async def _udp_replies(
        self,
        inner: trio.socket.SocketType,
        client: tuple[str, int],
        sessions: dict[tuple[str, int], trio.socket.SocketType],
    ) -> None:
        try:
            while True:
                with trio.move_on_after(UDP_IDLE) as idle:
                    try:
                        data = await inner.recv(65535)
                    except OSError:
                        continue
                if idle.cancelled_caught:
                    return
                await self._listener.sendto(data, client)
        finally:
            sessions.pop(client, None)
            inner.close()


async def _pump(src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
    # One direction of a TCP connection; the end of it (EOF) is passed on
    # as a half-close, so request/response protocols see it.
    try:
        while True:
            data = await src.recv(_CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                sent = await dst.send(view)
                view = view[sent:]
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # A reset on either side ends both directions.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
