"""Config that names something is checked when it is set, not at the next start.

A config value is parsed by its key (lxpy.model.config) wherever it comes
from; this module checks what parsing cannot: that what a value refers to
exists on this host now. `network` must name managed networks (or the
default one, made on first use); `ipv4.address` must be usable on the
first of them and not held by another container; `init` must be a program
in the container's rootfs. (`limits.cpu` is checked against the host's
CPUs when it is parsed.) Set (PATCH config) and create check the keys they
change; a restart checks the whole config before it stops the container,
so a config its start would refuse never leaves it stopped.

Looking into a rootfs from the host goes through lxpy.kernel.inroot: no
symlink out of it is followed and nothing is opened, so a FIFO or device
node where init should be is named, never opened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lxpy.build.rootfs import init_problem as rootfs_init_problem
from lxpy.daemon.networks import Networks
from lxpy.daemon.state import Daemon
from lxpy.errors import Busy, InvalidArgument, LxpyError
from lxpy.kernel.inroot import Rootfs
from lxpy.model.config import lookup_key
from lxpy.model.network import network_list
from lxpy.model.suggest import not_found_hint

# Keys whose values name something outside the container's record.
NETWORK_KEYS = frozenset({"network", "ipv4.address"})


def changed_keys(old: Mapping[str, object], new: Mapping[str, object]) -> set[str]:
    """The keys set, changed or unset from `old` to `new`."""
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def deferred(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """The changed keys that a running container gets only at its next start."""
    return sorted(k for k in changed_keys(old, new) if not lookup_key(k).live)


def check_networks(networks: Networks, config: Mapping[str, object]) -> None:
    """Every network `config` names exists (the default one is made on first use).

    Raises:
        InvalidArgument: naming the missing network, with the nearest known one.
    """
    nets = networks
    for net in network_list(config.get("network")):
        if net not in nets.nets and net != nets.default_network:
            known = [*nets.nets, *([nets.default_network] if nets.default_network else [])]
            near = not_found_hint(net, known, "known networks", "`lxpy network list`")
            raise InvalidArgument(
                f"network {net!r} not found",
                hint=f"{near} (`lxpy network create {net}` makes it)",
            )


def check_address(
    d: Daemon,
    networks: Networks,
    name: str,
    config: Mapping[str, object],
    strict: bool,
    sees: Callable[[str], bool] | None = None,
) -> None:
    """`ipv4.address` of container `name` is usable on its first network and
    not held by a running container there; `strict` (a new value): not
    pinned by another container's config there either. `sees`: whether the
    caller may know of a container (a restricted user's own); one they
    may not is not named.

    The default network, before it is made, has no subnet to check against
    yet: its start checks it.

    Raises:
        InvalidArgument: no network, or an address outside the subnet's range.
        Busy: another container holds or pins it.
    """
    pinned = config.get("ipv4.address")
    if pinned is None:
        return
    address = str(pinned)
    nets = network_list(config.get("network"))
    if not nets:
        raise InvalidArgument(
            f"ipv4.address: container {name!r} pins {address} but joins no network",
            hint="set `network` too, or unset ipv4.address",
        )
    net = networks.nets.get(nets[0])
    if net is None:
        return
    net.check_pinned(address)

    def who(other: str) -> str:
        return f"container {other!r}" if sees is None or sees(other) else "another container"

    for other, nics in networks.attached.items():
        if other != name and any(n.network == net.name and n.ipv4 == address for n in nics):
            raise Busy(
                f"ipv4.address {address} on network {net.name} is held by {who(other)}, running",
                hint="pick another address",
            )
    if not strict:
        return
    for other, record in d.records.items():
        c = record.config
        same_net = network_list(c.get("network"))[:1] == nets[:1]
        if other != name and str(c.get("ipv4.address")) == address and same_net:
            raise Busy(
                f"ipv4.address {address} on network {net.name} is pinned by {who(other)}",
                hint="pick another address",
            )


def init_problem(rootfs: str, path: str) -> str | None:
    """Why `path` in `rootfs` cannot be run as init (None: it can); see
    lxpy.build.rootfs.init_problem.

    Blocking (a few syscalls): run it in a worker thread.
    """
    with Rootfs(rootfs, "the rootfs") as root:
        return rootfs_init_problem(root, path)


async def check_init(d: Daemon, name: str, rootfs: str, path: str, where: str) -> None:
    """`path` can be container `name`'s init in `rootfs` (`where`: "the
    rootfs of container 'web'", "template 'busybox'").

    Raises:
        InvalidArgument: what is wrong with it.
    """
    try:
        problem = await d.files(init_problem, rootfs, path)
    except OSError as e:
        raise LxpyError(f"cannot look into {where}: {e.strerror or e}") from None
    if problem is not None:
        raise init_error(name, path, problem, where)


def init_error(name: str, path: str, problem: str, where: str) -> InvalidArgument:
    """The error for init `path` of container `name`, which `problem` (see
    init_problem) keeps from running in `where`."""
    return InvalidArgument(
        f"init: {path} in {where} {problem}",
        hint=f"name a program inside the container, or `lxpy config unset {name} init` "
        "for the template's",
    )


async def check_change(
    d: Daemon,
    networks: Networks,
    name: str,
    old: Mapping[str, object],
    new: Mapping[str, object],
    sees: Callable[[str], bool] | None = None,
) -> None:
    """Check what a config change of container `name` refers to (the keys
    it changes only: an old value is not judged again); `sees` as for
    check_address.

    Raises:
        InvalidArgument, Busy: naming the key and what is wrong.
    """
    changed = changed_keys(old, new)
    if changed & NETWORK_KEYS:
        check_networks(networks, new)
        check_address(d, networks, name, new, strict="ipv4.address" in changed, sees=sees)
    if "init" in changed and "init" in new:
        rootfs = str(d.backend.container_path(name))
        await check_init(d, name, rootfs, str(new["init"]), f"the rootfs of container {name!r}")


async def check_start(
    d: Daemon,
    networks: Networks,
    name: str,
    config: Mapping[str, object],
    init: str,
    snapshot: str | None = None,
) -> None:
    """What the start of container `name` would refuse in its config
    (`init`: the program it would run), checked without touching it;
    `snapshot`: with the files of that snapshot of it (which a restore is
    about to bring back) rather than its rootfs as it is.

    Raises:
        InvalidArgument, Busy: naming the key and what is wrong.
    """
    check_networks(networks, config)
    check_address(d, networks, name, config, strict=False)
    if "limits.cpu" in config:
        # Parsed again: the host may have fewer CPUs than when it was set.
        lookup_key("limits.cpu").parse("limits.cpu", config["limits.cpu"])
    if snapshot is None:
        rootfs = str(d.backend.container_path(name))
        where = f"the rootfs of container {name!r}"
    else:
        rootfs = str(d.backend.snapshot_path(name, snapshot))
        where = f"snapshot {snapshot!r} of container {name!r}"
    await check_init(d, name, rootfs, init, where)
