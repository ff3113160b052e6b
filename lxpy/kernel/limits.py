"""Write a container's resource limits into its cgroups, on v2 or v1.

One interface over both cgroup versions: `apply_limits(cg, limits)` writes
every limit of a `lxpy.model.limits.Limits`, the unlimited value for the
ones that are not set, so applying the limits of a changed config is also
how a removed key is undone. Each controller is taken from the cgroup2
hierarchy when that hierarchy offers it (pure v2 hosts) and from its v1
hierarchy otherwise (hybrid and legacy hosts).

| limit          | cgroup v2                | cgroup v1                              |
| -------------- | ------------------------ | -------------------------------------- |
| memory         | memory.max               | memory.limit_in_bytes                  |
| swap           | memory.swap.max          | memory.memsw.limit_in_bytes (mem+swap) |
| cpu quota      | cpu.max "QUOTA PERIOD"   | cpu.cfs_quota_us, cpu.cfs_period_us    |
| cpu weight     | cpu.weight               | cpu.shares (weight 100 = 1024 shares)  |
| pinned CPUs    | cpuset.cpus              | cpuset.cpus                            |
| processes      | pids.max                 | pids.max                               |

`plan_limits` computes the writes without making them (tested on a fake
tree); `apply_limits` makes them in order.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lxpy.errors import Busy, InvalidArgument, LxpyError, NotFound, Unsupported
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import ContainerCgroup
from lxpy.model.limits import CPU_PERIOD_US, Limits, format_cpu_list

_DEFAULT_WEIGHT = 100
_DEFAULT_SHARES = 1024

# Which config key each controller serves, for errors that name the key.
_HINTS = {
    "memory": "enable the memory controller (cgroup_enable=memory on the kernel command line)",
    "cpu": "enable the cpu controller",
    "cpuset": "enable the cpuset controller",
    "pids": "enable the pids controller",
}


@dataclass(frozen=True)
class Write:
    """One value to write into one cgroup file, on behalf of a config key."""

    path: str
    value: str
    key: str


def controller_dir(cg: ContainerCgroup, controller: str) -> tuple[int, str] | None:
    """(cgroup version, directory) that serves `controller` for `cg`, or None.

    The cgroup2 directory wins when the cgroup2 hierarchy offers the
    controller; otherwise the v1 hierarchy that carries it.
    """
    for h, d in cg.dirs:
        if h.version == 2 and controller in h.controllers:
            return 2, d
    for h, d in cg.dirs:
        if h.version == 1 and controller in h.controllers:
            return 1, d
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _need(cg: ContainerCgroup, controller: str, key: str, wanted: bool) -> tuple[int, str] | None:
    found = controller_dir(cg, controller)
    if found is None and wanted:
        raise Unsupported(
            f"{key}: this host has no {controller} cgroup controller",
            hint=f"{_HINTS.get(controller, 'enable it')}, or unset {key}",
        )
    return found


def _v2_enable(d: str, controller: str, probe: str, key: str) -> list[Write]:
    # A cgroup2 child has a controller's files only when its parent lists
    # the controller in cgroup.subtree_control (systemd enables the usual
    # ones at the root; a bare v2 host may not have).
    if os.path.exists(os.path.join(d, probe)):
        return []
    return [
        Write(os.path.join(os.path.dirname(d), "cgroup.subtree_control"), "+" + controller, key)
    ]


def plan_limits(cg: ContainerCgroup, limits: Limits) -> list[Write]:
    """The writes that put `limits` into `cg`'s cgroups, in order.

    Reads the cgroup tree (which files exist, the parent's cpuset) but
    changes nothing.

    Raises:
        Unsupported: naming the key, when a limit is set and the host lacks
            its controller (or swap accounting for a swap limit).
        InvalidArgument: naming the key, for a combination the cgroup
            version cannot express.
    """
    out: list[Write] = []
    out += _plan_memory(cg, limits)
    out += _plan_cpu(cg, limits)
    out += _plan_cpuset(cg, limits)
    out += _plan_pids(cg, limits)
    return out


def _plan_pids(cg: ContainerCgroup, limits: Limits) -> list[Write]:
    wanted = limits.processes is not None and not limits.processes_default
    found = _need(cg, "pids", "limits.processes", wanted)
    if found is None:
        return []
    version, d = found
    out = _v2_enable(d, "pids", "pids.max", "limits.processes") if version == 2 else []
    value = str(limits.processes or "max")
    return [*out, Write(os.path.join(d, "pids.max"), value, "limits.processes")]


def _plan_memory(cg: ContainerCgroup, limits: Limits) -> list[Write]:
    key, skey = "limits.memory", "limits.memory.swap"
    want_swap = limits.memory_swap is not True
    found = _need(cg, "memory", key, limits.memory is not None or want_swap)
    if found is None:
        return []
    version, d = found
    out: list[Write] = []
    if version == 2:
        enabling = _v2_enable(d, "memory", "memory.max", key)
        out += enabling
        out.append(Write(os.path.join(d, "memory.max"), str(limits.memory or "max"), key))
        swap_file = os.path.join(d, "memory.swap.max")
        swap = limits.memory_swap
        value = "max" if swap is True else "0" if swap is False else str(swap)
        # memory.swap.max is missing without swap accounting: only a swap
        # limit needs it, "swap as the kernel allows" is the default anyway.
        # While the controller is being enabled its files are not there yet.
        if os.path.exists(swap_file) or (enabling and want_swap):
            out.append(Write(swap_file, value, skey))
        elif want_swap:
            raise Unsupported(
                f"{skey}: this host does not account swap (no memory.swap.max)",
                hint=f"boot with swapaccount=1, or unset {skey}",
            )
        return out
    # v1: memsw is memory + swap and must never be below the memory limit,
    # or the kernel refuses the write. Lift it first, set the memory limit,
    # then bring memsw down to its target.
    limit = os.path.join(d, "memory.limit_in_bytes")
    memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    if want_swap and not has_memsw:
        raise Unsupported(
            f"{skey}: this host does not account swap (no memory.memsw.limit_in_bytes)",
            hint=f"boot with swapaccount=1, or unset {skey}",
        )
    if want_swap and limits.memory is None:
        raise InvalidArgument(
            f"{skey}: on this host (cgroup v1) a swap limit needs limits.memory as well",
            hint="set limits.memory, or unset limits.memory.swap",
        )
    if has_memsw:
        out.append(Write(memsw, "-1", skey))
    out.append(Write(limit, str(limits.memory) if limits.memory is not None else "-1", key))
    if want_swap and limits.memory is not None:
        swap = 0 if limits.memory_swap is False else int(limits.memory_swap)
        out.append(Write(memsw, str(limits.memory + swap), skey))
    return out


def _plan_cpu(cg: ContainerCgroup, limits: Limits) -> list[Write]:
    key, wkey = "limits.cpu", "limits.cpu.weight"
    found = _need(
        cg,
        "cpu",
        key if limits.cpu_quota is not None else wkey,
        limits.cpu_quota is not None or limits.cpu_weight is not None,
    )
    if found is None:
        return []
    version, d = found
    quota = None if limits.cpu_quota is None else max(1000, round(limits.cpu_quota * CPU_PERIOD_US))
    if version == 2:
        out = _v2_enable(d, "cpu", "cpu.max", key)
        out.append(Write(os.path.join(d, "cpu.max"), f"{quota or 'max'} {CPU_PERIOD_US}", key))
        weight = limits.cpu_weight or _DEFAULT_WEIGHT
        out.append(Write(os.path.join(d, "cpu.weight"), str(weight), wkey))
        return out
    # v1: lift the quota before changing the period, so no intermediate
    # quota/period pair is refused against the parent's bandwidth.
    shares = (
        _DEFAULT_SHARES
        if limits.cpu_weight is None
        else max(2, round(limits.cpu_weight * _DEFAULT_SHARES / _DEFAULT_WEIGHT))
    )
    return [
        Write(os.path.join(d, "cpu.cfs_quota_us"), "-1", key),
        Write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US), key),
        Write(os.path.join(d, "cpu.cfs_quota_us"), str(quota or -1), key),
        Write(os.path.join(d, "cpu.shares"), str(shares), wkey),
    ]


def _plan_cpuset(cg: ContainerCgroup, limits: Limits) -> list[Write]:
    key = "limits.cpu"
    found = _need(cg, "cpuset", key, limits.cpu_set is not None)
    if found is None:
        return []
    version, d = found
    path = os.path.join(d, "cpuset.cpus")
    if version == 2:
        out = _v2_enable(d, "cpuset", "cpuset.cpus", key)
        # Empty means "whatever the parent has" on cgroup2.
        value = format_cpu_list(limits.cpu_set) if limits.cpu_set is not None else ""
        return [*out, Write(path, value, key)]
    if limits.cpu_set is not None:
        return [Write(path, format_cpu_list(limits.cpu_set), key)]
    # v1 has no "inherit": copy the parent's set back.
    try:
        parent = _read(os.path.join(os.path.dirname(d), "cpuset.cpus"))
    except OSError:
        return []
    return [Write(path, parent, key)]


def _write(w: Write) -> None:
    sc.write_file(w.path, w.value)


def apply_limits(
    target: ContainerCgroup | str,
    limits: Limits | Mapping[str, object],
    *,
    parent: str = "",
) -> None:
    """Write `limits` into a container's cgroups (all of them: unset = unlimited).

    Args:
        target: the container's cgroups, or its name (`lxpy.payload.NAME`
            on every mounted hierarchy, under `parent`).
        limits: the limits, or a container config mapping to read them from.
        parent: with a name, the cgroup parent the monitor used.

    Raises:
        NotFound: when the container's cgroups do not exist (not running).
        Unsupported: naming the key, when the host lacks what it needs.
        InvalidArgument: naming the key, when the kernel refuses a value.
        Busy: naming the key, when memory cannot be lowered below what the
            container uses now (cgroup v1 refuses rather than OOM-kills).
    """
    cg = ContainerCgroup.for_name(target, parent=parent) if isinstance(target, str) else target
    lim = limits if isinstance(limits, Limits) else Limits.from_config(limits)
    if not cg.exists():
        raise NotFound(
            f"cgroup of container {cg.name!r} does not exist",
            hint="limits are applied to a running container; they take effect at its next start",
        )
    _make(plan_limits(cg, lim))


def apply_process_limit(cg: ContainerCgroup, limits: Limits) -> None:
    """Write only `limits.processes` into `cg` (a fresh cgroup, whose other
    files hold the kernel's "no limit" already).

    Raises:
        as apply_limits.
    """
    _make(_plan_pids(cg, limits))


def _make(plan: list[Write]) -> None:
    for w in plan:
        try:
            _write(w)
        except OSError as e:
            raise _translate(w, e) from None


def _translate(w: Write, e: OSError) -> LxpyError:
    what = f"{w.key}: cannot write {w.value!r} to {w.path}: {e.strerror}"
    if e.errno == errno.EBUSY and w.path.endswith("limit_in_bytes"):
        return Busy(
            f"{w.key}: the container uses more memory than {w.value} bytes and it cannot be "
            f"reclaimed",
            hint="free memory inside the container first, or choose a higher limit",
        )
    if e.errno == errno.ENOENT:
        return NotFound(what, hint="the container stopped, or the host lacks this cgroup file")
    if e.errno in (errno.EINVAL, errno.ERANGE, errno.ENOSPC):
        return InvalidArgument(what, hint="the kernel refused this value for this host")
    return LxpyError(what)
