"""Container NICs on the managed networks: each running container's
veths, its bound network namespace, its static leases, its ports' filter
rules (lxpy.network.l2filter) and the addresses it holds.

These are methods of lxpy.daemon.networks.Networks, which holds the state
they share with the managed networks (the networks, the NICs attached to
each, their dnsmasq): a file per job of one service, as Incus spreads one
driver's methods over several files. Networks.open adopts the NIC records
of containers still running (`RUN/nics/CONTAINER.json`).

Entry points for the container lifecycle:

    handle = await networks.attach(name, config)   # before the monitor starts
    ... the monitor joins handle.path with setns(CLONE_NEWNET) ...
    await networks.detach(name)                    # after the container stopped
    await networks.addresses(name)                 # ["10.87.0.12", ...]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from lxpy.daemon import portfilter
from lxpy.daemon.registry import write_atomic
from lxpy.errors import Busy, InvalidArgument, LxpyError
from lxpy.model.network import Network, mac_address, network_list, veth_name
from lxpy.model.paths import RunPaths
from lxpy.model.security import SecurityConfig
from lxpy.network import dnsmasq, l2filter, links
from lxpy.network.links import Nic
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.networks")

T = TypeVar("T")

# Container name -> its config (the `network` and `ipv4.address` keys matter).
Users = Callable[[], Mapping[str, Mapping[str, object]]]


@dataclass(frozen=True)
class NetnsHandle:
    """What a starting container joins: the bound netns and its NICs."""

    path: str
    nics: tuple[Nic, ...]


class ContainerNics:
    """The container-NIC half of Networks (see the module docstring)."""

    # Set by Networks.__init__.
    root: Path
    run: RunPaths
    default_network: str
    users: Users
    table: str
    nets: dict[str, Network]
    # Running container -> its NICs.
    attached: dict[str, tuple[Nic, ...]]

    if TYPE_CHECKING:
        # Networks' own, used here.
        async def _run(self, fn: Callable[..., T], *args: object) -> T: ...
        def _paths(self, name: str) -> dnsmasq.Paths: ...
        def _binaries(self) -> dict[str, str]: ...
        def _require(self, name: str) -> Network: ...
        async def ensure_default(self) -> Network | None: ...
        def _write_hosts_sync(self, name: str) -> None: ...
        def _reload(self, name: str) -> None: ...
        def _prune_run_dir(self) -> None: ...

    def netns_path(self, container: str) -> Path:
        """Where container `container`'s network namespace is bound."""
        return self.run.netns(container)

    def _nics_path(self, container: str) -> Path:
        return self.run.nics(container)

    async def _network_for(self, name: str) -> Network:
        if name in self.nets:
            return self.nets[name]
        if name == self.default_network:
            net = await self.ensure_default()
            assert net is not None
            return net
        return self._require(name)

    async def attach(
        self,
        container: str,
        config: Mapping[str, object],
        userns: str = "",
        make_ns: Callable[[Path], Awaitable[None]] | None = None,
        security: SecurityConfig | None = None,
    ) -> NetnsHandle:
        """Make container `container`'s network namespace with one NIC per
        network its config names (eth0, eth1, ...), each host end on its
        bridge, and register its static lease. A stale namespace of the same
        container is replaced. On failure nothing is left behind; on success
        `detach` is the undo. With `userns` (a pinned user namespace), the
        network namespace is owned by it, so the container's root may
        configure its interfaces and mount sysfs. With `make_ns`, that
        function makes and binds the (empty, lo up) namespace at the path it
        is given, owned by `userns` (see Lifecycle._make_namespaces), and the
        NICs are added to it.

        A container on no network gets no bound namespace (the handle's path
        is ""): its launch makes one of its own, with only loopback, in the
        same step as its other namespaces. Nothing outside needs to reach it.

        Each port gets the filter rules its config asks for (security.
        mac_filtering, security.ipv4_filtering) before its veth exists; an
        IPv4-filtered NIC without a pinned address is given one, as a static
        lease (lxpy.daemon.portfilter). `security`: the container's security
        settings, when the caller parsed them already (a start has);
        read from `config` otherwise.

        Raises:
            NotFound: a named network does not exist (the default one is made).
            InvalidArgument: `ipv4.address` is not usable on the first network.
            Busy: the pinned address is held by another running container, or
                a network has no free address left for an IPv4-filtered NIC.
        """
        names = network_list(config.get("network"))
        pinned = config.get("ipv4.address")
        nets = [await self._network_for(n) for n in names]
        if pinned is not None and not nets:
            raise InvalidArgument(
                f"container {container!r} pins ipv4.address {pinned} but joins no network",
                hint="set `network` too, or unset ipv4.address",
            )
        if pinned is not None:
            self.check_pinned(container, nets[0], str(pinned))
        root = str(self.root)
        nics = portfilter.flagged(
            (
                Nic(
                    network=net.name,
                    bridge=net.name,
                    host=veth_name(root, container, i),
                    peer=f"eth{i}",
                    mac=mac_address(root, container, i),
                    ipv4=str(pinned) if i == 0 and pinned is not None else None,
                )
                for i, net in enumerate(nets)
            ),
            security if security is not None else SecurityConfig.from_config(config),
        )
        if container in self.attached or self.netns_path(container).exists():
            await self.detach(container)
        if not nics:
            return NetnsHandle("", ())
        leases = await self._leases_for(nics)
        # No await from the choice of addresses to their claim in
        # `attached`: a start running beside this one sees them taken.
        nics = self._fix_addresses(container, nics, leases)
        self.attached[container] = nics
        path = self.netns_path(container)
        async with AsyncRevert(f"network of {container}") as rv:
            # Idempotent: it removes whatever of the claim, the namespace
            # and the veths is there.
            rv.undo(lambda: self.detach(container), f"detach {container}")
            if make_ns is None:
                await self._run(self._make_netns, container, path, nics, userns)
            else:
                # The run directory exists once the daemon's networks are up;
                # this is a no-op stat on tmpfs after the first start.
                path.parent.mkdir(parents=True, exist_ok=True)
                await make_ns(path)
                await self._run(self._fill_netns, container, path, nics)
            await self._update_hosts({n.network for n in nics})
        return NetnsHandle(str(path), nics)

    def check_pinned(self, container: str, net: Network, pinned: str) -> None:
        """Whether `container` may pin `pinned` on `net`.

        Raises:
            InvalidArgument: not usable on `net`.
            Busy: another running container holds it there.
        """
        net.check_pinned(pinned)
        for other, nics in self.attached.items():
            if other != container and any(n.network == net.name and n.ipv4 == pinned for n in nics):
                raise Busy(
                    f"ipv4.address {pinned} on network {net.name} is held by "
                    f"running container {other!r}",
                    hint="pick another address",
                )

    def _fill_netns(self, container: str, path: Path, nics: tuple[Nic, ...]) -> None:
        # One worker trip: the ports' rules (before their veths exist, so
        # no frame passes unfiltered), the veths into the namespace, then
        # their record.
        self._filter_new(nics)
        links.add_nics(path, list(nics))
        self._save_nics(container, nics)

    def _make_netns(self, container: str, path: Path, nics: tuple[Nic, ...], userns: str) -> None:
        # _fill_netns for a namespace made here rather than by the zygote.
        self._filter_new(nics)
        links.create_netns_in_userns(path, list(nics), userns)
        self._save_nics(container, nics)

    def _save_nics(self, container: str, nics: tuple[Nic, ...]) -> None:
        data = json.dumps([n.to_json() for n in nics]).encode()
        self._nics_path(container).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._nics_path(container), data)

    async def _update_hosts(self, networks: set[str]) -> None:
        for name in networks:
            if name in self.nets:
                await self._run(self._write_hosts_sync, name)
                self._reload(name)

    async def detach(self, container: str) -> None:
        """Remove container `container`'s veths, namespace and static leases
        (idempotent)."""
        nics = self.attached.pop(container, ())
        # Decided just before the worker job is queued: the limiter runs
        # jobs in order, so a start that claims a port after this point has
        # its rules made after this removal.
        keep_table = self._any_filtered()
        with trio.CancelScope(shield=True):

            def work() -> None:
                links.delete_links(n.host for n in nics)
                links.remove_netns(self.netns_path(container))
                self._nics_path(container).unlink(missing_ok=True)
                self._prune_run_dir()
                # After the veths: no moment with a port up and unfiltered.
                if any(l2filter.filtered(n) for n in nics):
                    try:
                        self._filter((), [n.host for n in nics], keep_table)
                    except LxpyError as e:
                        # The next lxpyd start replaces the table whole.
                        log.error("container %s: port filters left: %s", container, e.message)

            await self._run(work)
            await self._update_hosts({n.network for n in nics})

    # -- port filtering (lxpy.network.l2filter) ---------------------------------
    def _filter(
        self, nics: tuple[Nic, ...], gone: list[str] | tuple[()] = (), keep_table: bool = True
    ) -> None:
        # The rules of `nics`' ports as their flags say; the ports of the
        # veths `gone` removed. Blocking.
        script = l2filter.update_script(self.table, nics, gone, keep_table)
        l2filter.run(self.table, script, self._binaries()["nft"])

    def _filter_new(self, nics: tuple[Nic, ...]) -> None:
        # A starting container's ports; none filtered: no table is made.
        if any(l2filter.filtered(n) for n in nics):
            self._filter(nics)

    def _sync_filters(self) -> None:
        # The table as the running containers' NIC records say, whatever
        # it held: after a restart, nothing twice and nothing of a container
        # that ended while lxpyd was away.
        nics = [n for ns in self.attached.values() for n in ns]
        l2filter.run(self.table, l2filter.sync_script(self.table, nics), self._binaries()["nft"])

    def _any_filtered(self) -> bool:
        return any(l2filter.filtered(n) for ns in self.attached.values() for n in ns)

    async def _leases_for(self, nics: tuple[Nic, ...]) -> dict[str, list[dnsmasq.Lease]]:
        # The live leases of the networks where a NIC's address is to be fixed.
        wanted = {n.network for n in nics if n.ipv4_filtering and n.ipv4 is None}
        if not wanted:
            return {}

        def read() -> dict[str, list[dnsmasq.Lease]]:
            return {name: dnsmasq.live_leases(self._paths(name).leases) for name in wanted}

        return await self._run(read)

    def _fix_addresses(
        self, container: str, nics: tuple[Nic, ...], leases: Mapping[str, list[dnsmasq.Lease]]
    ) -> tuple[Nic, ...]:
        # No await in here: the caller claims the result before its next one.
        taken = portfilter.taken_addresses(container, self.attached, self.users())
        return portfilter.fix_addresses(container, nics, self.nets, taken, leases)

    async def refilter(self, container: str, config: Mapping[str, object]) -> bool:
        """Give the ports of running container `container` the rules its
        `config` asks for (security.mac_filtering, security.ipv4_filtering)
        at once. Turned on, IPv4 filtering fixes the address it holds a
        lease for (or a free one, which it gets at its next DHCP renewal).

        Returns False when it has no port (not running, or on no network):
        the keys then apply at its next start.

        Raises:
            LxpyError: nft refused the rules (the old ones stay).
            Busy: no address is free for it.
        """
        sec = SecurityConfig.from_config(config)
        leases = await self._leases_for(portfilter.flagged(self.nics(container), sec))
        old = self.nics(container)
        if not old:
            return False
        new = self._fix_addresses(container, portfilter.flagged(old, sec), leases)
        if new == old:
            return True
        self.attached[container] = new
        keep_table = self._any_filtered()

        def work() -> None:
            self._filter(new, keep_table=keep_table)
            self._save_nics(container, new)

        async def put_back() -> None:
            # Unless a stop or another change came meanwhile.
            if self.attached.get(container) is new:
                self.attached[container] = old

        async with AsyncRevert(f"port filters of {container}") as rv:
            rv.undo(put_back, f"give {container} its old ports back")
            await self._run(work)
        if [n.ipv4 for n in new] != [n.ipv4 for n in old]:
            await self._update_hosts({n.network for n in new})
        return True

    def filtering(self, container: str, config: Mapping[str, object]) -> str | None:
        """One line for `lxpy info` (lxpy.daemon.portfilter.describe); None
        when the container joins no network."""
        if not network_list(config.get("network")):
            return None
        return portfilter.describe(config, self.nics(container))

    def nics(self, container: str) -> tuple[Nic, ...]:
        """The NICs of a running container (empty when it has none)."""
        return self.attached.get(container, ())

    async def addresses(self, container: str) -> list[str]:
        """IPv4 addresses of a running container: read in its namespace, or
        from the leases when the namespace cannot be read."""
        nics = self.attached.get(container)
        if not nics:
            return []  # not running, or no NIC: nothing to read
        path = self.netns_path(container)
        try:
            per_if = await self._run(links.netns_ipv4, path)
            return [a.split("/")[0] for n in nics for a in per_if.get(n.peer, [])]
        except OSError as e:
            log.debug("cannot read addresses in %s: %s", path, e)
        out: list[str] = []
        for n in nics:
            leases = await self._run(dnsmasq.read_leases, self._paths(n.network).leases)
            out += [le.ipv4 for le in leases if le.mac == n.mac]
        return out

    async def addresses_of(self, containers: list[str]) -> dict[str, list[str]]:
        """IPv4 addresses of many containers (for listings): from the leases
        of their networks, read once per network; a container without a
        lease is read in its namespace.

        Why: a namespace read costs a thread and a netlink socket per
        container (about 2 ms); with 100 running containers that alone
        would take `lxpy list` past its budget.
        """
        wanted = {c: self.attached[c] for c in containers if c in self.attached}
        networks = {n.network for nics in wanted.values() for n in nics}

        def read_leases() -> dict[str, str]:
            by_mac: dict[str, str] = {}
            for net in networks:
                try:
                    for le in dnsmasq.read_leases(self._paths(net).leases):
                        by_mac[le.mac] = le.ipv4
                except OSError:
                    continue
            return by_mac

        by_mac = await self._run(read_leases) if networks else {}
        out: dict[str, list[str]] = {}
        for c, nics in wanted.items():
            found = [by_mac[n.mac] for n in nics if n.mac in by_mac]
            out[c] = found if found or not nics else await self.addresses(c)
        return out


def joins_network(config: Mapping[str, object]) -> bool:
    """Whether a container with `config` gets NICs, so a network namespace
    made before its launch (see Networks.attach)."""
    return bool(network_list(config.get("network")))
