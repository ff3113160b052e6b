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

Entry points for the container lifecycle:

    handle = await networks.attach(name, config)   # before the monitor starts
    ... the monitor joins handle.path with setns(CLONE_NEWNET) ...
    await networks.detach(name)                    # after the container stopped
    await networks.addresses(name)                 # ["10.87.0.12", ...]
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from lxpy.daemon import dnsmasqd, portfilter
from lxpy.daemon.dnsmasqd import DnsmasqState
from lxpy.daemon.journal import Journal
from lxpy.daemon.recovery import settle_networks
from lxpy.daemon.registry import write_atomic
from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound
from lxpy.model.network import (
    DEFAULT_NETWORK,
    Network,
    first_free_subnet,
    mac_address,
    network_list,
    parse_subnet,
    root_id,
    validate_network_name,
    veth_name,
)
from lxpy.model.security import SecurityConfig
from lxpy.model.suggest import not_found_hint
from lxpy.network import dnsmasq, l2filter, links, nftables, preflight
from lxpy.network.links import Nic

log = logging.getLogger("lxpyd.networks")

T = TypeVar("T")
RUN_BASE = Path("/run/lxpy")

# Container name -> its config (the `network` and `ipv4.address` keys matter).
Users = Callable[[], Mapping[str, Mapping[str, object]]]


@dataclass(frozen=True)
class NetnsHandle:
    """What a starting container joins: the bound netns and its NICs."""

    path: str
    nics: tuple[Nic, ...]


class Networks:
    """Managed networks of one daemon root. Build it with `await Networks.open(...)`."""

    def __init__(
        self,
        root: Path,
        nursery: trio.Nursery,
        run_dir: Path | None = None,
        default_network: str = DEFAULT_NETWORK,
        default_subnet: str = "auto",
        users: Users | None = None,
        journal: Journal | None = None,
        scopes: bool = False,
    ) -> None:
        self.root = root
        self.journal = journal or Journal(root)
        self.id = root_id(str(root))
        self.run_dir = run_dir or RUN_BASE / self.id
        self.state_dir = root / "networks"
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
        return self.state_dir / f"{name}.toml"

    def netns_path(self, container: str) -> Path:
        """Where container `container`'s network namespace is bound."""
        return self.run_dir / "netns" / container

    def _nics_path(self, container: str) -> Path:
        return self.run_dir / "nics" / f"{container}.json"

    def _paths(self, name: str) -> dnsmasq.Paths:
        run = self.run_dir / "networks" / name
        state = self.state_dir / name
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
        run_dir: Path | None = None,
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
        self = cls(root, nursery, run_dir, default_network, default_subnet, users, journal, scopes)
        self.nets, self.attached = await self._run(self._load)
        await self._run(settle_networks, self.journal, self)
        if self.nets or self.attached:
            try:
                await self._run(self._sync_filters)
            except LxpyError as e:
                log.error("port filters: %s%s", e.message, f" ({e.hint})" if e.hint else "")
        for net in sorted(self.nets.values(), key=lambda n: n.name):
            try:
                await self._bring_up(net, created_bridge=[])
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
        for f in sorted(self.state_dir.glob("*.toml")):
            try:
                net = Network.from_toml(f.read_text(), str(f))
            except LxpyError as e:
                log.error("skipping network record: %s", e.message)
                continue
            nets[net.name] = net
        attached: dict[str, tuple[Nic, ...]] = {}
        for f in sorted((self.run_dir / "nics").glob("*.json")):
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
        if (self.run_dir / "netns").is_dir():
            for p in (self.run_dir / "netns").iterdir():
                if p.name not in attached:
                    links.remove_netns(p)
        self._prune_run_dir()
        return nets, attached

    def _prune_run_dir(self) -> None:
        # Empty directories only: whatever is still in use stays.
        for d in (
            self.run_dir / "netns",
            self.run_dir / "nics",
            self.run_dir / "networks",
            self.run_dir,
        ):
            with contextlib.suppress(OSError):
                d.rmdir()

    async def _bring_up(self, net: Network, created_bridge: list[bool]) -> None:
        # Idempotent: every step checks what is there first.
        bins = self._binaries()
        spec = self._spec(net)
        paths = spec.paths

        def host_side() -> tuple[int, int] | None:
            with preflight.host_lock():
                others = [n.subnet for n in self.nets.values() if n.name != net.name]
                used = links.used_subnets(exclude=[net.name]) + others
                preflight.check_subnet_free(net.subnet, used, f"network {net.name}")
                gw = ipaddress.IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")
                created = links.ensure_bridge(
                    net.name, self._mark(net.name), gw, self._bridge_mac(net.name)
                )
                created_bridge.append(created)
            links.enslave(n for nics in self.attached.values() for n in nics)
            for p in paths.as_tuple():
                p.parent.mkdir(parents=True, exist_ok=True)
            # dnsmasq re-reads the hosts file after dropping root.
            for d in (self.run_dir, self.run_dir / "networks", paths.hosts.parent):
                os.chmod(d, 0o755)
            self._write_hosts_sync(net.name)
            # The dnsmasq that outlived the last lxpyd serves on; without
            # one, its ports must be free.
            found = dnsmasqd.find(spec, net.name)
            if found is None:
                preflight.check_ports(net.gateway, net.name)
            return found

        found = await self._run(host_side)
        state = DnsmasqState(net, *(found or (None, -1)))
        self.dnsmasq[net.name] = state
        try:
            nets = {**self.nets, net.name: net}
            await self._run(nftables.apply, self.table, list(nets.values()), bins["nft"])
            if net.nat:
                await self._run(nftables.enable_ip_forward)
            await self._run(dnsmasqd.resolved_link_dns, net)
            await self.nursery.start(dnsmasqd.supervise, state, spec)
        except BaseException:
            self.dnsmasq.pop(net.name, None)
            dnsmasqd.forget(state)
            raise

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
        created: list[bool] = []

        async def undo() -> None:
            self.nets.pop(name, None)
            await self._teardown(net, delete_bridge=bool(created and created[0]))

        async with self.journal.begin("network-create", name=name) as op:
            op.undo(undo, f"remove network {name}")
            await self._bring_up(net, created)
            op.step("bridge-up")
            self.nets[name] = net
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
        (self.state_dir / net.name).mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path(net.name), net.to_toml().encode())

    async def _teardown(self, net: Network, delete_bridge: bool = True) -> None:
        # Removes what _bring_up made; each step is idempotent.
        await self._stop_dnsmasq(net.name)
        # Also one that serves it unsupervised (it failed to come up).
        await self._run(dnsmasq.kill_stale, self._paths(net.name))
        errors: list[str] = []
        try:
            await self._run(self.apply_table)
        except LxpyError as e:
            errors.append(e.message)
        if delete_bridge:
            await self._run(links.delete_bridge, net.name, self._mark(net.name))
        if errors:
            log.error("network %s teardown: %s", net.name, "; ".join(errors))

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
        shutil.rmtree(self.state_dir / name, ignore_errors=True)
        shutil.rmtree(self.run_dir / "networks" / name, ignore_errors=True)
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

    # -- container NICs ----------------------------------------------------------
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
        try:
            if make_ns is None:
                await self._run(self._make_netns, container, path, nics, userns)
            else:
                # The run directory exists once the daemon's networks are up;
                # this is a no-op stat on tmpfs after the first start.
                path.parent.mkdir(parents=True, exist_ok=True)
                await make_ns(path)
                await self._run(self._fill_netns, container, path, nics)
            await self._update_hosts({n.network for n in nics})
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.detach(container)
            raise
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

        try:
            await self._run(work)
        except BaseException:
            if self.attached.get(container) is new:
                self.attached[container] = old
            raise
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
