"""Resource limits and stats of running containers, on lxpyd's side.

* lxcfs: made sure of once when lxpyd starts (setting `lxcfs`); its mount
  goes into every launch spec, and the launch path binds its files.
* CPU balancing: a container whose `limits.cpu` is a quota (`0.5`, `1.5`) is
  also pinned to ceil(quota) CPUs, the ones least used by the other running
  containers, as Incus does, so `nproc` inside shows the quota rounded up
  rather than the host's count. The pins are worked out again whenever a
  container starts, stops or changes `limits.cpu`.
* Live changes: the cgroup `limits.*` keys (CGROUP_KEYS) changed on a
  running container are written into its cgroups before the new config is
  saved; `limits.pty` and `limits.kernel.*` take effect at the next start.
* Stats: lxpy.kernel.stats read in a worker thread.

The kernel writes and reads are blocking and run in worker threads under
one limiter of their own.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from lxpy.errors import InvalidArgument, LxpyError
from lxpy.kernel import lxcfs
from lxpy.kernel.cgroups import ContainerCgroup, hierarchies
from lxpy.kernel.limits import apply_limits, controller_dir
from lxpy.kernel.stats import disk_usage, read_stats
from lxpy.model.limits import CGROUP_KEYS, Limits, host_cpus

if TYPE_CHECKING:
    from lxpy.daemon.state import Daemon

log = logging.getLogger("lxpyd.resources")

Pins = dict[str, tuple[int, ...]]


def balance(wants: Mapping[str, int], fixed: Iterable[Iterable[int]], cpus: Sequence[int]) -> Pins:
    """Choose CPUs for containers that want a number of them.

    Args:
        wants: container name -> how many CPUs to pin it to.
        fixed: CPU sets pinned by their own config (they count as load).
        cpus: the host's CPUs.

    Returns:
        name -> its CPUs. Bigger wants choose first (ties by name); each
        takes the CPUs with the fewest containers on them so far (ties: the
        lower number). The same inputs always give the same answer.
    """
    load = dict.fromkeys(cpus, 0)
    for cpu_set in fixed:
        for c in cpu_set:
            if c in load:
                load[c] += 1
    out: Pins = {}
    for name in sorted(wants, key=lambda n: (-wants[n], n)):
        count = max(1, min(wants[name], len(load)))
        chosen = sorted(sorted(load, key=lambda c: (load[c], c))[:count])
        for c in chosen:
            load[c] += 1
        out[name] = tuple(chosen)
    return out


def limits_config(config: Mapping[str, object]) -> dict[str, object]:
    """The `limits.*` keys of a container config."""
    return {k: v for k, v in config.items() if k.startswith("limits.")}


def _limits(config: Mapping[str, object]) -> Limits | None:
    try:
        return Limits.from_config(config)
    except InvalidArgument:
        return None


def _ensure_lxcfs(mode: str, mountpoint: str) -> str | None:
    # One lxcfs serves every daemon on the host: a lock keeps two daemons
    # starting at once from mounting two on the same directory.
    os.makedirs(os.path.dirname(mountpoint.rstrip("/")) or "/", exist_ok=True)
    fd = os.open(mountpoint.rstrip("/") + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # The system's mount may be reused wherever lxcfs runs; a mount of
        # our own (tests, a second host setup) is used only there.
        return lxcfs.ensure(mode, mountpoint, reuse=mountpoint == lxcfs.SYSTEM_MOUNT)
    finally:
        os.close(fd)


def _has_cpuset() -> bool:
    try:
        return controller_dir(ContainerCgroup.for_name("probe"), "cpuset") is not None
    except LxpyError:
        return False


class Resources:
    """Limits, CPU pins, lxcfs and stats of daemon `d`'s containers."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        # The lxcfs mount containers bind from; "" without lxcfs.
        self.lxcfs = ""
        # CPUs each running quota-limited container is pinned to now.
        self.pins: Pins = {}
        self.limiter = trio.CapacityLimiter(4)
        # Disk-use walks: one at a time (a second asker then finds it cached).
        self.disk_limiter = trio.CapacityLimiter(1)
        self._balance_lock = trio.Lock()
        # Pinning needs the cpuset controller; without it a quota is time only.
        self.can_pin = True

    async def setup(self) -> None:
        """Find or start lxcfs as the `lxcfs` setting says.

        Raises:
            Unsupported: with `lxcfs = "on"`, when it cannot be had.
        """
        s = self.d.settings
        self.can_pin = await trio.to_thread.run_sync(_has_cpuset)
        found = await trio.to_thread.run_sync(_ensure_lxcfs, s.lxcfs, str(s.lxcfs_mount))
        self.lxcfs = found or ""
        if found:
            log.info("lxcfs: containers bind from %s", found)
        elif s.lxcfs != "off":
            log.info("lxcfs: not available; free, uptime and nproc inside show the host's")

    # -- CPU pins -------------------------------------------------------------
    def _assignment(self, extra: str = "", override: Mapping[str, object] | None = None) -> Pins:
        """Pins for the running containers (and `extra`, about to start),
        with `override` as `extra`'s config when given."""
        wants: dict[str, int] = {}
        fixed: list[tuple[int, ...]] = []
        names = set(self.d.running) | ({extra} if extra else set())
        for name in sorted(names):
            record = self.d.records.get(name)
            if record is None:
                continue
            config = override if name == extra and override is not None else record.config
            if "limits.cpu" not in config:
                continue  # the usual case, and one to skip: this runs per start and stop
            lim = _limits(config)
            if lim is None:
                continue
            if lim.cpu_set is not None:
                fixed.append(lim.cpu_set)
            elif lim.cpu_quota is not None and self.can_pin:
                wants[name] = math.ceil(lim.cpu_quota)
        # Nobody to place: no need to read the host's CPUs (a sysfs read on
        # the event loop, at every start and stop).
        return balance(wants, fixed, host_cpus()) if wants else {}

    def launch_fields(self, name: str, config: Mapping[str, object]) -> dict[str, object]:
        """The LaunchSpec fields of a container about to start: limits,
        balanced CPUs and the lxcfs mount."""
        cpus = self._assignment(name).get(name, ())
        if cpus:
            self.pins[name] = cpus
        else:
            self.pins.pop(name, None)
        return {"limits": limits_config(config), "cpus": cpus, "lxcfs": self.lxcfs}

    async def rebalance(self) -> None:
        """Work the pins out again for the running containers and move the
        ones whose CPUs changed (after a start, a stop, a limits change)."""
        async with self._balance_lock:
            want = self._assignment()
            for name in list(self.pins):
                if name not in want:
                    del self.pins[name]
            for name, cpus in want.items():
                if self.pins.get(name) == cpus or name not in self.d.running:
                    continue
                lim = _limits(self.d.records[name].config)
                if lim is None:
                    continue
                try:
                    await self._apply(name, replace(lim, cpu_set=cpus))
                except LxpyError as e:
                    log.warning("container %s: cannot move to CPUs %s: %s", name, cpus, e.message)
                    continue
                self.pins[name] = cpus

    async def _apply(self, name: str, limits: Limits) -> None:
        def work() -> None:
            apply_limits(self.d.cgroup(name), limits)

        await trio.to_thread.run_sync(work, limiter=self.limiter)

    # -- live changes ---------------------------------------------------------
    async def apply_live(
        self, name: str, old: Mapping[str, object], new: Mapping[str, object]
    ) -> list[str]:
        """Write a running container's changed cgroup `limits.*` keys into
        its cgroups now. Returns the keys that changed (none: nothing written).

        On failure the old limits are written back, so the kernel holds
        what the saved config says.

        Raises:
            InvalidArgument, Busy, Unsupported, NotFound: naming the key.
        """
        changed = sorted(
            k for k in set(old) | set(new) if k in CGROUP_KEYS and old.get(k) != new.get(k)
        )
        if not changed or name not in self.d.running:
            return []
        lim = Limits.from_config(new)
        cpus = self._assignment(name, new).get(name)
        target = replace(lim, cpu_set=cpus) if cpus and lim.cpu_set is None else lim
        try:
            await self._apply(name, target)
        except LxpyError as e:
            back = _limits(old)
            if back is not None:
                pinned = self.pins.get(name)
                if pinned and back.cpu_set is None and back.cpu_quota is not None:
                    back = replace(back, cpu_set=pinned)
                with trio.CancelScope(shield=True):
                    try:
                        await self._apply(name, back)
                    except LxpyError:
                        log.warning("container %s: could not restore its old limits", name)
            if e.message.startswith("limits."):
                raise
            raise type(e)(f"{', '.join(changed)}: {e.message}", e.hint) from None
        if cpus and lim.cpu_set is None:
            self.pins[name] = cpus
        else:
            self.pins.pop(name, None)
        return changed

    # -- stats ----------------------------------------------------------------
    async def stats(self, name: str, disk: bool = True) -> dict[str, object] | None:
        """Resource use of container `name`; None unless it runs.

        Args:
            disk: also the disk use of its root (a cached walk).
        """
        info = self.d.running.get(name)
        if info is None:
            return None

        def work() -> dict[str, object]:
            return read_stats(self.d.cgroup(name), info.init_pid, None, disk=False)

        out = await trio.to_thread.run_sync(work, limiter=self.limiter)
        if disk:
            # A limiter of its own: a long walk (a rootfs of many files)
            # must not hold up limits being applied or other stats.
            rootfs = str(self.d.backend.container_path(name))
            out["disk_bytes"] = await trio.to_thread.run_sync(
                disk_usage, rootfs, limiter=self.disk_limiter
            )
        return out

    async def stats_many(self, names: Iterable[str]) -> dict[str, dict[str, object]]:
        """Stats without disk use of the running ones of `names`, in one
        worker-thread trip (for the container list)."""
        wanted = set(names)
        running = {n: i.init_pid for n, i in self.d.running.items() if n in wanted}
        if not running:
            return {}

        def work() -> dict[str, dict[str, object]]:
            hs = hierarchies()
            return {
                n: read_stats(self.d.cgroup(n, hs), pid, None, disk=False)
                for n, pid in running.items()
            }

        return await trio.to_thread.run_sync(work, limiter=self.limiter)
