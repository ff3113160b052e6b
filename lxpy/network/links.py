"""Bridges, veth pairs and bound network namespaces, over netlink (pyroute2).

Every function here blocks and opens its own IPRoute: the daemon runs each
in a worker thread (pyroute2's sync IPRoute belongs to the thread that
opened it). Errors come out as lxpy errors naming the interface.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from lxpy.errors import AlreadyExists, Busy, LxpyError, NotFound
from lxpy.kernel import namespaces
from lxpy.kernel import syscalls as sc
from lxpy.kernel.netif import link_up
from lxpy.revert import Revert

_RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class Nic:
    """One container NIC: `host` on bridge `bridge`, `peer` (eth0) inside.

    `ipv4` is its address when lxpy fixes it (pinned, or allocated for IPv4
    filtering: a static lease either way); the filtering flags say which of
    its rules are on its port (lxpy.network.l2filter).
    """

    network: str
    bridge: str
    host: str
    peer: str
    mac: str
    ipv4: str | None = None
    mac_filtering: bool = False
    ipv4_filtering: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "network": self.network,
            "bridge": self.bridge,
            "host": self.host,
            "peer": self.peer,
            "mac": self.mac,
            "ipv4": self.ipv4,
            "mac_filtering": self.mac_filtering,
            "ipv4_filtering": self.ipv4_filtering,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Nic:
        ipv4 = data.get("ipv4")
        return cls(
            network=str(data["network"]),
            bridge=str(data["bridge"]),
            host=str(data["host"]),
            peer=str(data["peer"]),
            mac=str(data["mac"]),
            ipv4=None if ipv4 is None else str(ipv4),
            # A record of an older lxpyd has none: its port has no rules.
            mac_filtering=data.get("mac_filtering") is True,
            ipv4_filtering=data.get("ipv4_filtering") is True,
        )


def _index(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


# -- bridges -------------------------------------------------------------------


def bridge_mark(root_id: str, network: str) -> str:
    """The interface alias that says a bridge is this daemon's network."""
    return f"lxpy:{root_id}:{network}"


def ensure_bridge(name: str, mark: str, gateway: ipaddress.IPv4Interface, mac: str) -> bool:
    """Make bridge `name` with address `gateway`, up; reuse it when it is ours.

    Returns True when the bridge was created (the caller's undo deletes it).

    Raises:
        Busy: a link of that name exists and is not this network's bridge.
    """
    with IPRoute() as ip, Revert(f"bridge {name}") as rv:
        idx = _index(ip, name)
        created = False
        if idx is not None:
            link = ip.get_links(idx)[0]
            kind = None
            info = _attr(link, "IFLA_LINKINFO")
            if info is not None:
                kind = info.get_attr("IFLA_INFO_KIND")
            if _attr(link, "IFLA_IFALIAS") != mark or kind != "bridge":
                raise Busy(
                    f"interface {name} exists and is not lxpy's bridge for this network",
                    hint=f"delete or rename that interface (`ip link del {name}`), "
                    "or pick another network name",
                )
        else:
            # A fixed MAC: a bridge otherwise takes the lowest MAC of its
            # ports, which changes as containers come and go and breaks the
            # containers' ARP caches for the gateway.
            ip.link("add", ifname=name, kind="bridge", address=mac, br_stp_state=0)
            rv.undo(lambda: _delete_link(ip, name), f"delete bridge {name}")
            created = True
            idx = _index(ip, name)
            assert idx is not None
        ip.link("set", index=idx, ifalias=mark)
        ip.link("set", index=idx, br_forward_delay=0)
        have = {
            (str(_attr(a, "IFA_ADDRESS")), int(a["prefixlen"]))
            for a in ip.get_addr(index=idx, family=socket.AF_INET)
        }
        want = (str(gateway.ip), gateway.network.prefixlen)
        if want not in have:
            ip.addr("add", index=idx, address=want[0], prefixlen=want[1])
        _refuse_router_adverts(name)
        ip.link("set", index=idx, state="up")
        return created


def _refuse_router_adverts(name: str) -> None:
    # The bridge is its containers' gateway: it must not take an IPv6
    # address or route from a router advertisement one of them sends, which
    # the kernel accepts by default on a host that does not forward IPv6.
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
            f.write("0\n")
    except FileNotFoundError:
        pass  # no IPv6 on this host


def delete_bridge(name: str, mark: str) -> None:
    """Delete bridge `name` if it is ours (idempotent)."""
    with IPRoute() as ip:
        idx = _index(ip, name)
        if idx is None:
            return
        if _attr(ip.get_links(idx)[0], "IFLA_IFALIAS") != mark:
            return
        _delete_link(ip, name)


def _delete_link(ip: IPRoute, name: str) -> None:
    try:
        ip.link("del", ifname=name)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise


def delete_links(names: Iterable[str]) -> None:
    """Delete the links `names` that exist (a veth takes its peer with it)."""
    with IPRoute() as ip:
        for name in names:
            if _index(ip, name) is not None:
                _delete_link(ip, name)


def existing_links(names: Iterable[str]) -> set[str]:
    """Which of `names` exist as links in the host namespace."""
    with IPRoute() as ip:
        return {n for n in names if _index(ip, n) is not None}


def enslave(nics: Iterable[Nic]) -> None:
    """Put each existing host end back on its bridge (after the bridge was re-made)."""
    with IPRoute() as ip:
        for nic in nics:
            idx, br = _index(ip, nic.host), _index(ip, nic.bridge)
            if idx is None or br is None:
                continue
            if _attr(ip.get_links(idx)[0], "IFLA_MASTER") != br:
                ip.link("set", index=idx, master=br, state="up")


def used_subnets(exclude: Iterable[str] = ()) -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host uses: main-table routes (but the default route)
    and interface addresses, leaving out links named in `exclude`."""
    skip = set(exclude)
    out: list[ipaddress.IPv4Network] = []
    with IPRoute() as ip:
        names = {int(link["index"]): str(_attr(link, "IFLA_IFNAME")) for link in ip.get_links()}
        for r in ip.get_routes(family=socket.AF_INET, table=_RT_TABLE_MAIN):
            if not r["dst_len"]:
                continue
            if names.get(int(_attr(r, "RTA_OIF") or 0), "") in skip:
                continue
            dst = _attr(r, "RTA_DST")
            out.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
        for a in ip.get_addr(family=socket.AF_INET):
            if names.get(int(a["index"]), "") in skip:
                continue
            out.append(
                ipaddress.IPv4Network(f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            )
    return out


# -- network namespaces and veth pairs ----------------------------------------


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def netns_exists(path: Path) -> bool:
    """Whether `path` is a bound network namespace."""
    return path.exists() and _is_mountpoint(path)


def remove_netns(path: Path) -> None:
    """Unbind and remove the namespace file `path` (idempotent). The namespace
    itself ends when nothing else holds it."""
    if not path.exists():
        return
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    path.unlink(missing_ok=True)


def _setup_in_new_netns(path: Path, nics: list[Nic], netns_fd: int = -1) -> None:
    # Runs on a thread of its own: unshare(CLONE_NEWNET) moves only this
    # thread into the new namespace, so the daemon's other threads stay in
    # the host's, and the thread ends there: nothing has to switch back.
    # The netlink socket is opened first, so it stays in the host namespace
    # where the bridges are.
    with IPRoute() as ip:
        ip.link_lookup(ifname="lo")
        if netns_fd >= 0:
            sc.setns(netns_fd, sc.CLONE_NEWNET)
        else:
            sc.unshare(sc.CLONE_NEWNET)
        path.touch(mode=0o444)
        sc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, sc.MS_BIND)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # This thread is in the new namespace: the ioctl socket is too.
            link_up("lo")
            _add_nics(ip, fd, nics)
        finally:
            os.close(fd)


def _add_nics(ip: IPRoute, fd: int, nics: list[Nic]) -> None:
    # `ip`: a netlink socket in the host namespace; the calling thread is in
    # the namespace `fd`. On failure no veth of `nics` is left.
    with Revert("veths " + ", ".join(n.host for n in nics)) as rv:
        for nic in nics:
            bridge = _index(ip, nic.bridge)
            if bridge is None:
                raise LxpyError(
                    f"bridge {nic.bridge} of network {nic.network} is missing",
                    hint="restart lxpyd to re-create its networks",
                )
            if _index(ip, nic.host) is not None:
                _delete_link(ip, nic.host)
            # One request makes the pair, puts the host end on the bridge
            # and up, and creates the peer inside the namespace with its
            # final name and MAC: no rename, no move.
            ip.link(
                "add",
                ifname=nic.host,
                kind="veth",
                master=bridge,
                state="up",
                peer={"ifname": nic.peer, "address": nic.mac, "net_ns_fd": fd},
            )
            # Deleting the host end takes the peer with it.
            rv.undo(functools.partial(_delete_link, ip, nic.host), f"delete veth {nic.host}")
        for nic in nics:
            link_up(nic.peer)


def add_nics(path: Path, nics: list[Nic]) -> None:
    """Put `nics` (veth peers, up, with their MACs) into the bound network
    namespace at `path` (made elsewhere, lo up: see
    lxpy.kernel.namespaces.pin_new_namespaces), their host ends on their bridges
    and up. On failure no veth is left; the namespace stays.

    Raises:
        LxpyError: a bridge is missing, or netlink refused a step.
        OSError: the namespace cannot be joined.
    """
    if not nics:
        return

    def work() -> None:
        # It joins the namespace (so the ioctl socket bringing the peers up
        # is there). The netlink socket is opened first, in the host
        # namespace where the bridges are.
        with IPRoute() as ip:
            ip.link_lookup(ifname="lo")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWNET)
                _add_nics(ip, fd, nics)
            finally:
                os.close(fd)

    try:
        in_own_thread("lxpy-netns-nics", work)
    except NetlinkError as e:
        raise _setup_error(path, e) from e


def create_netns_in_userns(path: Path, nics: list[Nic], userns: str) -> None:
    """create_netns, the namespace owned by the user namespace bound at
    `userns` (a container's: its root may then configure its interfaces and
    mount sysfs); "" for the host's.

    Raises:
        LxpyError, OSError: as create_netns, and OSError when the user
            namespace cannot be opened or entered.
    """
    if not userns:
        create_netns(path, nics)
        return
    ufd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nfd = namespaces.create_netns_in(ufd)
    finally:
        os.close(ufd)
    try:
        create_netns(path, nics, nfd)
    finally:
        os.close(nfd)


def create_netns(path: Path, nics: list[Nic], netns_fd: int = -1) -> None:
    """Bind a new network namespace at `path` holding `nics` (veth peers,
    up, with their MACs), their host ends on their bridges and up.

    `netns_fd`: an empty namespace made elsewhere to use instead of a new
    one (an unprivileged container's, owned by its user namespace:
    lxpy.kernel.namespaces.create_netns_in).

    On failure nothing is left: no veth, no bound namespace.

    Raises:
        LxpyError: a bridge is missing, or netlink refused a step.
        OSError: from unshare/mount.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with Revert(f"network namespace {path}") as rv:
        # Idempotent: it removes the bind and the file, whichever the
        # thread got to make.
        rv.undo(lambda: remove_netns(path), f"remove the network namespace {path}")
        try:
            in_own_thread("lxpy-netns", lambda: _setup_in_new_netns(path, nics, netns_fd))
        except NetlinkError as e:
            raise _setup_error(path, e) from e


def netns_ipv4(path: Path) -> dict[str, list[str]]:
    """IPv4 addresses (CIDR) per interface inside the namespace at `path`,
    leaving out lo."""

    def work() -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        sc.setns_path(path, sc.CLONE_NEWNET)
        with IPRoute() as ip:
            names = {int(link["index"]): str(_attr(link, "IFLA_IFNAME")) for link in ip.get_links()}
            for a in ip.get_addr(family=socket.AF_INET):
                name = names.get(int(a["index"]), "?")
                if name != "lo":
                    result.setdefault(name, []).append(
                        f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}"
                    )
        return result

    return in_own_thread("lxpy-netns-read", work)


# rtnetlink's multicast group of IPv4 address changes (linux/rtnetlink.h).
_RTMGRP_IPV4_IFADDR = 0x10


def address_events(path: Path) -> socket.socket:
    """A netlink socket that receives a message whenever an IPv4 address
    in the network namespace at `path` is added or removed (a socket
    keeps the namespace it was made in). Non-blocking, close-on-exec.

    Raises:
        OSError: the namespace cannot be entered.
    """

    def work() -> socket.socket:
        sc.setns_path(path, sc.CLONE_NEWNET)
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            sock.bind((0, _RTMGRP_IPV4_IFADDR))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    return in_own_thread("lxpy-netns-watch", work)


_T = TypeVar("_T")


def in_own_thread(name: str, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a new thread and return its result (or raise its error).

    Why: setns(CLONE_NEWNET) moves only the calling thread. A thread that
    joins a container's namespace and ends there leaves the caller (a
    worker of lxpyd's) in the host's.
    """
    out: list[_T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work, name=name)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _setup_error(path: Path, e: NetlinkError) -> LxpyError:
    return LxpyError(f"cannot set up the network of {path.name}: {e}")


# -- NICs added to and removed from a running container -------------------------


def links_in(path: Path) -> dict[str, str]:
    """Interface name -> MAC of every link in the network namespace at `path`."""

    def work() -> dict[str, str]:
        sc.setns_path(path, sc.CLONE_NEWNET)
        with IPRoute() as ip:
            return {
                str(_attr(link, "IFLA_IFNAME")): str(_attr(link, "IFLA_ADDRESS"))
                for link in ip.get_links()
            }

    return in_own_thread("lxpy-netns-links", work)


def add_macvlan(path: Path, name: str, parent: str, mac: str, mode: str = "bridge") -> None:
    """Make a macvlan of host interface `parent` named `name` (with `mac`),
    up, inside the network namespace at `path`: made there in one request,
    so it never appears in the host's namespace. Nothing is left on failure.

    Raises:
        NotFound: `parent` does not exist.
        AlreadyExists: `name` exists in the namespace.
        LxpyError: netlink refused it (its message).
    """

    def work() -> None:
        with IPRoute() as ip:
            link = _index(ip, parent)
            if link is None:
                raise NotFound(
                    f"parent interface {parent} does not exist on the host",
                    hint="give an existing host interface (`ip link`)",
                )
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWNET)
                with IPRoute() as inner:
                    if _index(inner, name) is not None:
                        raise AlreadyExists(
                            f"interface {name} exists in the container already",
                            hint="give the NIC another name=",
                        )
                ip.link(
                    "add",
                    ifname=name,
                    kind="macvlan",
                    link=link,
                    macvlan_mode=mode,
                    address=mac,
                    net_ns_fd=fd,
                )
            finally:
                os.close(fd)
            with Revert(f"macvlan {name}") as rv:
                rv.undo(lambda: _delete_here(name), f"delete macvlan {name}")
                link_up(name)

    try:
        in_own_thread("lxpy-netns-macvlan", work)
    except NetlinkError as e:
        raise LxpyError(f"cannot make macvlan {name} on {parent}: {e}") from e


def remove_link_in(path: Path, name: str) -> None:
    """Delete interface `name` inside the network namespace at `path` (a
    veth takes its host end with it); idempotent."""

    def work() -> None:
        sc.setns_path(path, sc.CLONE_NEWNET)
        _delete_here(name)

    in_own_thread("lxpy-netns-unlink", work)


def _delete_here(name: str) -> None:
    # In the network namespace the calling thread is in.
    with IPRoute() as ip:
        _delete_link(ip, name)
