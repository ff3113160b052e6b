"""The daemon's network service: managed networks and container NICs.

A managed network is a bridge with the subnet's first address, one dnsmasq
(DHCP, DNS for `NAME.lxpy`; supervised by lxpy.daemon.dnsmasqd, it outlives
lxpyd), and rules in lxpy's own nftables table. Its record is
`ROOT/networks/NAME.toml`; its leases and dnsmasq's log are in
`ROOT/networks/NAME/`; its hosts file and pid file are in the run dir,
with the bound network namespaces (`RUN/netns/CONTAINER`) and the NIC
records of running containers (`RUN/nics/CONTAINER.json`). Everything is
re-created idempotently by `Networks.open` when lxpyd starts, and removed
on delete.

The containers' side (attach, detach, port filters, addresses) is in
lxpy.daemon.nics.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import trio

from lxpy.daemon import dnsmasqd
from lxpy.daemon.dnsmasqd import DnsmasqState
from lxpy.daemon.journal import Journal
from lxpy.daemon.nics import ContainerNics, Users
from lxpy.daemon.recovery import settle_networks
from lxpy.daemon.registry import write_atomic
from lxpy.errors import AlreadyExists, Busy, LxpyError, NotFound
from lxpy.model.network import (
    DEFAULT_NETWORK,
    Network,
    first_free_subnet,
    mac_address,
    network_list,
    parse_subnet,
    root_id,
    validate_network_name,
)
from lxpy.model.paths import RootPaths
from lxpy.model.suggest import not_found_hint
from lxpy.network import dnsmasq, links, nftables, preflight
from lxpy.network.links import Nic
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.networks")

T = TypeVar("T")


class Networks(ContainerNics):
    """Managed networks of one daemon root, and the NICs of its running
    containers on them (lxpy.daemon.nics). Build it with `await Networks.open(...)`."""

    def __init__(
        self,
        root: Path,
        nursery: trio.Nursery,
        default_network: str = DEFAULT_NETWORK,
        default_subnet: str = "auto",
        users: Users | None = None,
        journal: Journal | None = None,
        scopes: bool = False,
    ) -> None:
        self.root = root
        self.journal = journal or Journal(root)
        self.id = root_id(str(root))
        self.paths = RootPaths(root)
        self.run = self.paths.run
        self.nursery = nursery
        self.default_network = default_network
        self.default_subnet = default_subnet
        self.users = users or (lambda: {})
        # Under systemd: each dnsmasq in a scope unit of its own.
        self.scopes = scopes
        self.table = nftables.table_name(self.id)
        self.nets: dict[str, Network] = {}
        self.dnsmasq: dict[str, DnsmasqState] = {}
        self.attached: dict[str, tuple[Nic, ...]] = {}
        self._lock = trio.Lock()
        # Netlink calls are short; one at a time keeps bridge and veth
        # changes of concurrent requests from interleaving.
        self.limiter = trio.CapacityLimiter(1)
        self._bins: dict[str, str] | None = None

    # -- paths -----------------------------------------------------------------
    def record_path(self, name: str) -> Path:
        return self.paths.network_record(name)

    def _paths(self, name: str) -> dnsmasq.Paths:
        run = self.run.network(name)
        state = self.paths.network(name)
        return dnsmasq.Paths(
            leases=state / "leases",
            hosts=run / "hosts",
            pid=run / "dnsmasq.pid",
            log=state / "dnsmasq.log",
        )

    def _spec(self, net: Network) -> dnsmasqd.Spec:
        paths = self._paths(net.name)
        return dnsmasqd.Spec(
            dnsmasq.command(self._binaries()["dnsmasq"], net, paths),
            paths,
            dnsmasqd.scope_unit(self.id, net.name) if self.scopes else "",
        )

    def _mark(self, name: str) -> str:
        return links.bridge_mark(self.id, name)

    def _bridge_mac(self, name: str) -> str:
        return mac_address(str(self.root), "bridge:" + name)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _binaries(self) -> dict[str, str]:
        if self._bins is None:
            self._bins = preflight.find_binaries()
        return self._bins

    # -- start -----------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        root: Path,
        nursery: trio.Nursery,
        default_network: str = DEFAULT_NETWORK,
        default_subnet: str = "auto",
        users: Users | None = None,
        journal: Journal | None = None,
        scopes: bool = False,
    ) -> Networks:
        """Load the networks of `root`, settle a create or delete a crash
        cut short (lxpy.daemon.recovery), and bring each up again (bridge,
        nftables, dnsmasq), adopting the NICs of containers still running
        and the dnsmasq still serving each network. A network that cannot
        be brought up is logged and shown in error; it does not stop the
        daemon."""
        self = cls(root, nursery, default_network, default_subnet, users, journal, scopes)
        self.nets, self.attached = await self._run(self._load)
        await self._run(settle_networks, self.journal, self)
        if self.nets or self.attached:
            try:
                await self._run(self._sync_filters)
            except LxpyError as e:
                log.error("port filters: %s%s", e.message, f" ({e.hint})" if e.hint else "")
        for net in sorted(self.nets.values(), key=lambda n: n.name):
            try:
                await self._bring_up(net)
            except LxpyError as e:
                log.error("network %s: %s%s", net.name, e.message, f" ({e.hint})" if e.hint else "")
                self.dnsmasq[net.name] = DnsmasqState(net, error=e.message)
                self.dnsmasq[net.name].done.set()
        if self.nets:
            log.info("networks: %s", ", ".join(sorted(self.nets)))
        return self

    def _load(self) -> tuple[dict[str, Network], dict[str, tuple[Nic, ...]]]:
        # Nothing is made here: a daemon without networks leaves no trace in
        # the run dir.
        nets: dict[str, Network] = {}
        for f in sorted(self.paths.networks.glob("*.toml")):
            try:
                net = Network.from_toml(f.read_text(), str(f))
            except LxpyError as e:
                log.error("skipping network record: %s", e.message)
                continue
            nets[net.name] = net
        attached: dict[str, tuple[Nic, ...]] = {}
        for f in sorted(self.run.nics_dir.glob("*.json")):
            container = f.stem
            try:
                nics = tuple(Nic.from_json(n) for n in json.loads(f.read_text()))
            except (ValueError, KeyError, TypeError):
                nics = ()
            if links.netns_exists(self.netns_path(container)):
                attached[container] = nics
                continue
            # The container ended while lxpyd was away: drop what it left.
            links.delete_links(n.host for n in nics)
            f.unlink(missing_ok=True)
        if self.run.netns_dir.is_dir():
            for p in self.run.netns_dir.iterdir():
                if p.name not in attached:
                    links.remove_netns(p)
        self._prune_run_dir()
        return nets, attached

    def _prune_run_dir(self) -> None:
        # Empty directories only: whatever is still in use stays.
        for d in (
            self.run.netns_dir,
            self.run.nics_dir,
            self.run.networks,
            self.run.dir,
        ):
            with contextlib.suppress(OSError):
                d.rmdir()

    async def _bring_up(self, net: Network, made: AsyncRevert | None = None) -> None:
        # Idempotent: every step checks what is there first. `made` (a
        # network being created) gets the undo of what this makes; at start
        # a network that cannot come up keeps its bridge, shown in error.
        bins = self._binaries()
        spec = self._spec(net)
        paths = spec.paths

        def bridge() -> bool:
            with preflight.host_lock():
                others = [n.subnet for n in self.nets.values() if n.name != net.name]
                used = links.used_subnets(exclude=[net.name]) + others
                preflight.check_subnet_free(net.subnet, used, f"network {net.name}")
                gw = ipaddress.IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")
                return links.ensure_bridge(
                    net.name, self._mark(net.name), gw, self._bridge_mac(net.name)
                )

        def host_side() -> tuple[int, int] | None:
            links.enslave(n for nics in self.attached.values() for n in nics)
            for p in paths.as_tuple():
                p.parent.mkdir(parents=True, exist_ok=True)
            # dnsmasq re-reads the hosts file after dropping root.
            for d in (self.run.dir, self.run.networks, paths.hosts.parent):
                os.chmod(d, 0o755)
            self._write_hosts_sync(net.name)
            # The dnsmasq that outlived the last lxpyd serves on; without
            # one, its ports must be free.
            found = dnsmasqd.find(spec, net.name)
            if found is None:
                preflight.check_ports(net.gateway, net.name)
            return found

        created = await self._run(bridge)
        if made is not None:
            if created:
                made.undo(
                    lambda: self._run(links.delete_bridge, net.name, self._mark(net.name)),
                    f"delete bridge {net.name}",
                )
            made.undo(lambda: self._stop_services(net), f"stop the services of network {net.name}")
        found = await self._run(host_side)
        state = DnsmasqState(net, *(found or (None, -1)))
        self.dnsmasq[net.name] = state

        async def let_go() -> None:
            self.dnsmasq.pop(net.name, None)
            dnsmasqd.forget(state)

        async with AsyncRevert(f"network {net.name}") as rv:
            rv.undo(let_go, f"let go of the dnsmasq of network {net.name}")
            nets = {**self.nets, net.name: net}
            await self._run(nftables.apply, self.table, list(nets.values()), bins["nft"])
            if net.nat:
                await self._run(nftables.enable_ip_forward)
            await self._run(dnsmasqd.resolved_link_dns, net)
            await self.nursery.start(dnsmasqd.supervise, state, spec)

    async def _stop_dnsmasq(self, name: str) -> None:
        st = self.dnsmasq.pop(name, None)
        if st is not None:
            await dnsmasqd.stop(st)

    def _reload(self, name: str) -> None:
        st = self.dnsmasq.get(name)
        if st is not None:
            dnsmasqd.reload(st)

    def _write_hosts_sync(self, name: str) -> None:
        hosts = [
            dnsmasq.Host(n.mac, container, n.ipv4)
            for container, nics in self.attached.items()
            for n in nics
            if n.network == name
        ]
        path = self._paths(name).hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        dnsmasq.write_hosts(path, hosts)

    # -- managed networks --------------------------------------------------------
    async def create(
        self, name: object, subnet: str | None = None, nat: bool = True
    ) -> dict[str, object]:
        """Create network `name` (bridge, nftables rules, dnsmasq).

        Args:
            name: what the request gave (validated here).
            subnet: an IPv4 CIDR, or None/"auto" for the first free 10.x.y.0/24.
            nat: masquerade the subnet's traffic out of the host.

        Raises:
            InvalidArgument: a bad name or subnet.
            AlreadyExists: the network exists.
            Busy: the subnet overlaps a host route, the bridge name is taken,
                or port 53/67 is taken.
            Unsupported: dnsmasq or nft is missing.
        """
        name = validate_network_name(name)
        async with self._lock:
            net = await self._create_locked(name, subnet, nat)
        return await self.info(net.name)

    async def _create_locked(self, name: str, subnet: str | None, nat: bool) -> Network:
        if name in self.nets:
            raise AlreadyExists(
                f"network {name!r} already exists", hint="pick another name or delete it first"
            )
        chosen = None if subnet in (None, "", "auto") else parse_subnet(subnet)
        self._binaries()
        if chosen is None:
            chosen = await self._run(self._pick_subnet, name)
        net = Network(name=name, subnet=chosen, nat=nat)

        async def unlist() -> None:
            self.nets.pop(name, None)

        async with self.journal.begin("network-create", name=name) as op:
            await self._bring_up(net, op)
            op.step("bridge-up")
            self.nets[name] = net
            op.undo(unlist, f"take network {name} out of the list")
            await self._run(self._save, net)
            op.step("recorded")
        log.info("network %s created: %s, nat %s", name, net.subnet, "on" if nat else "off")
        return net

    def _pick_subnet(self, name: str) -> ipaddress.IPv4Network:
        with preflight.host_lock():
            used = links.used_subnets(exclude=[name]) + [n.subnet for n in self.nets.values()]
        found = first_free_subnet(used)
        if found is None:
            raise Busy(
                "no free 10.87.0.0/24 .. 10.99.255.0/24 subnet is left on this host",
                hint="give one with --subnet",
            )
        return found

    def _save(self, net: Network) -> None:
        self.paths.network(net.name).mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path(net.name), net.to_toml().encode())

    async def _teardown(self, net: Network) -> None:
        # Removes what _bring_up made; each step is idempotent.
        await self._stop_services(net)
        await self._run(links.delete_bridge, net.name, self._mark(net.name))

    async def _stop_services(self, net: Network) -> None:
        # What _bring_up made beside the bridge: its dnsmasq and its rules
        # (`nets` no longer holds `net`). Idempotent.
        await self._stop_dnsmasq(net.name)
        # Also one that serves it unsupervised (it failed to come up).
        await self._run(dnsmasq.kill_stale, self._paths(net.name))
        try:
            await self._run(self.apply_table)
        except LxpyError as e:
            log.error("network %s teardown: %s", net.name, e.message)

    async def delete(self, name: str) -> None:
        """Delete network `name`: dnsmasq, its rules, the bridge, its files.

        Raises:
            NotFound: no such network.
            Busy: a container is attached to it or names it in its config.
        """
        async with self._lock:
            net = self._require(name)
            running = sorted(
                c for c, nics in self.attached.items() if any(n.network == name for n in nics)
            )
            if running:
                raise Busy(
                    f"network {name!r} is in use by running containers: {', '.join(running)}",
                    hint="stop them first",
                )
            configured = sorted(
                c for c, cfg in self.users().items() if name in network_list(cfg.get("network"))
            )
            if configured:
                raise Busy(
                    f"network {name!r} is named in the config of: {', '.join(configured)}",
                    hint="change their `network` key (lxpy config set NAME network ...) first",
                )
            async with self.journal.begin("network-delete", name=name) as op:
                del self.nets[name]
                await self._teardown(net)
                op.step("torn-down")
                await self._run(self._remove_files, name)
                op.step("record-removed")
        log.info("network %s deleted", name)

    def remove_leftovers(self, name: str) -> None:
        """What network `name` (not in `nets`) left: its dnsmasq, bridge and
        files. Blocking; for recovery."""
        dnsmasq.kill_stale(self._paths(name))
        links.delete_bridge(name, self._mark(name))
        self._remove_files(name)

    def apply_table(self) -> None:
        """lxpy's nftables table as `nets` says (none: no table). Blocking."""
        nftables.apply(self.table, list(self.nets.values()), self._binaries()["nft"])

    async def release(self, container: str, config: Mapping[str, object]) -> None:
        """Give up the DHCP leases of container `container`, destroyed or
        renamed (the MACs of its NICs go with its name): dnsmasq drops them
        at once, and the names it resolved to their addresses with them.
        Logged, never raised: a lease left expires within the hour."""
        # NIC i's MAC, for every NIC it may have had: its config may have
        # changed since the lease was taken.
        count = max(len(network_list(config.get("network"))), len(self.nets))
        macs = {mac_address(str(self.root), container, i) for i in range(count)}
        for name in sorted(self.nets):
            st = self.dnsmasq.get(name)
            if st is not None:
                await dnsmasqd.release(st, self._paths(name).leases, macs, container)

    def _remove_files(self, name: str) -> None:
        self.record_path(name).unlink(missing_ok=True)
        shutil.rmtree(self.paths.network(name), ignore_errors=True)
        shutil.rmtree(self.run.network(name), ignore_errors=True)
        self._prune_run_dir()

    def _require(self, name: str) -> Network:
        try:
            return self.nets[name]
        except KeyError:
            raise NotFound(
                f"network {name!r} not found",
                hint=not_found_hint(name, self.nets, "known networks", "`lxpy network list`")
                + f" (`lxpy network create {name}` makes it)",
            ) from None

    async def ensure_default(self) -> Network | None:
        """The default network, created (with a free subnet) when missing;
        None when the daemon has no default network."""
        if not self.default_network:
            return None
        async with self._lock:
            if self.default_network not in self.nets:
                await self._create_locked(self.default_network, self.default_subnet, True)
            return self.nets[self.default_network]

    async def list_all(self) -> list[dict[str, object]]:
        return [self._describe(n) for n in sorted(self.nets)]

    async def info(self, name: str) -> dict[str, object]:
        """The network object, with its dnsmasq state and current leases."""
        self._require(name)
        out = self._describe(name)
        leases = await self._run(dnsmasq.read_leases, self._paths(name).leases)
        out["leases"] = [
            {"mac": le.mac, "ipv4": le.ipv4, "hostname": le.hostname, "expires": le.expires}
            for le in leases
        ]
        return out

    def _describe(self, name: str) -> dict[str, object]:
        net = self.nets[name]
        st = self.dnsmasq.get(name)
        pid = st.pid if st else None
        alive = pid is not None
        return {
            **net.to_json(),
            "bridge": name,
            "status": "running" if alive else "error",
            "dnsmasq_pid": pid,
            "dnsmasq_restarts": st.restarts if st else 0,
            "error": None if alive else (st.error if st else "not running"),
            "used_by": sorted(
                c for c, nics in self.attached.items() if any(n.network == name for n in nics)
            ),
        }
