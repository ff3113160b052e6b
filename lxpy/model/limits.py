"""Resource limits (`limits.*`) and boot behaviour (`boot.*`) of a container.

The config parsers here check what a user typed and return what is stored:
sizes and CPU specs keep the user's spelling (normalised), so `lxpy config
get` shows `512MiB` and not a byte count, and parsing a stored value again
gives the same value (records are re-validated on every load).
`Limits.from_config` and `Boot.from_config` turn a container's stored config
into typed values for the kernel layer and the daemon.

Meaning of the keys (docs/limits.md has the user's view):

* `limits.memory`: hard memory limit, a size (`512MiB`, `1G`) or a share of
  the host's RAM (`50%`). At least 1 MiB.
* `limits.memory.swap`: `true` (default: swap as the kernel allows),
  `false` (no swap), or a size (at most that much swap). Incus takes only
  true/false; a size is an lxpy extension.
* `limits.cpu`: a plain number is CPU *time*, in CPUs' worth (`0.5` = half a
  CPU, `2` = two CPUs' worth, spread over any CPU); a list or range of CPU
  numbers (`0-1,3`, or `1-1` for CPU 1 alone) *pins* the container to those
  CPUs. Unlike Incus, a bare integer is time, not a pinned count.
* `limits.cpu.weight`: share of CPU under contention, 1..10000 (default
  100), as cgroup v2's cpu.weight.
* `limits.processes`: most processes (tasks) at once, >= 1, or `max` for
  no limit. Unset: DEFAULT_PROCESSES_SHARE of the host's PIDs (see
  default_processes), so that no container can take all of them.
* `limits.pty`: most ptys the container's own devpts instance hands out
  (devpts `max=`), default 1024 as LXC's `lxc.pty.max`.
* `limits.kernel.max_inotify_instances`, `limits.kernel.max_inotify_watches`:
  the container user namespace's own `user.max_inotify_*` sysctls (per user
  inside); unset, the host's per-user `fs.inotify.max_user_*`. The host's
  ceiling is raised to a higher value (lxpy.kernel.hostlimits).
* `boot.autostart`, `boot.priority` (higher starts first), `boot.delay`
  (seconds to wait after starting this one before the next),
  `boot.stop_priority` (higher stops first), `boot.restart` (no |
  on-failure | always) and `boot.restart_max` (restarts allowed in any
  60 seconds before the container is left in ERROR).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lxpy.errors import InvalidArgument
from lxpy.model.units import parse_size

MIN_MEMORY = 1024 * 1024
# The kernel refuses a CFS quota under 1 ms; with the 100 ms period used
# here that is a hundredth of a CPU.
CPU_PERIOD_US = 100_000
MIN_CPU = 0.01
MAX_WEIGHT = 10_000
RESTART_WINDOW = 60.0
DEFAULT_RESTART_MAX = 5
# systemd's DefaultTasksMax: a service may have 15% of the host's PIDs, so
# that no one of them exhausts the table; a container is held to the same.
DEFAULT_PROCESSES_SHARE = 0.15
# LXC's lxc.pty.max in its common.conf; the kernel's own ceiling per
# devpts instance is NR_UNIX98_PTY_MAX.
DEFAULT_PTY = 1024
MAX_PTY = 1 << 20
# The kernel keeps ucount limits in an int.
MAX_UCOUNT = 2**31 - 1
# Keys written into a running container's cgroups (lxpy.kernel.limits); the
# other limits.* keys are set up at start and take effect at the next one.
CGROUP_KEYS = frozenset(
    ("limits.memory", "limits.memory.swap", "limits.cpu", "limits.cpu.weight", "limits.processes")
)

_CPU_SET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


# -- host facts -----------------------------------------------------------


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list (`0-3,6`) into sorted CPU numbers.

    Raises:
        ValueError: when `text` is not a CPU list or a range runs backwards.
    """
    text = text.strip()
    if not text:
        return ()
    if not _CPU_SET.fullmatch(text):
        raise ValueError(f"not a CPU list: {text!r}")
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _sep, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The kernel's spelling of a CPU set: (1, 0, 2, 5) -> `0-2,5`."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def host_cpus() -> tuple[int, ...]:
    """The host's online CPUs (what a pinned set may name)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return tuple(range(os.cpu_count() or 1))


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def default_processes() -> int:
    """`limits.processes` when unset: DEFAULT_PROCESSES_SHARE of the
    host's PIDs, the smaller of kernel.pid_max and kernel.threads-max (a
    thread takes a PID too), as systemd's DefaultTasksMax computes it."""
    try:
        pids = min(_read_int("/proc/sys/kernel/pid_max"), _read_int("/proc/sys/kernel/threads-max"))
    except (OSError, ValueError, IndexError):
        pids = 32768  # the kernel's own default pid_max
    return max(1, int(pids * DEFAULT_PROCESSES_SHARE))


def host_memory() -> int:
    """The host's RAM in bytes (MemTotal), for `limits.memory = N%`."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemTotal missing from /proc/meminfo")


# -- parsers for the config keys (key, value) -> stored value -----------------


def _str_or_number(key: str, value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(f"{key}: expected {what}, got {value!r}")
    text = str(value).strip()
    if not text:
        raise InvalidArgument(
            f"{key}: empty value",
            hint=f"unset the key to remove the limit: lxpy config unset NAME {key}",
        )
    return text


def parse_memory(key: str, value: object) -> str:
    """`limits.memory`: a size (`512MiB`) or a share of host RAM (`50%`).

    Raises:
        InvalidArgument: naming the key, for a bad unit, a negative, zero
            or too small size, or a percentage outside 1..100.
    """
    text = _str_or_number(key, value, "a size such as 512MiB or a percentage such as 50%")
    if text.startswith("-"):
        raise InvalidArgument(f"{key}: a memory limit cannot be negative, got {text!r}")
    m = _PERCENT.fullmatch(text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise InvalidArgument(f"{key}: percentage must be in 1..100, got {text!r}")
        return f"{m.group(1)}%"
    size = parse_size(text, key)
    if size < MIN_MEMORY:
        raise InvalidArgument(
            f"{key}: {text!r} is too small, the least is 1MiB",
            hint="write a unit: 512MiB, 2GiB (a bare number is bytes)",
        )
    return text


def parse_swap(key: str, value: object) -> bool | str:
    """`limits.memory.swap`: true, false, or a size of swap allowed.

    Raises:
        InvalidArgument: naming the key.
    """
    if isinstance(value, bool):
        return value
    text = _str_or_number(key, value, "true, false or a size")
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if text.startswith("-"):
        raise InvalidArgument(f"{key}: a swap limit cannot be negative, got {text!r}")
    parse_size(text, key)
    return text


def parse_cpu(key: str, value: object) -> str:
    """`limits.cpu`: CPUs' worth of time (`0.5`, `2`) or a pinned set (`0-1,3`).

    Raises:
        InvalidArgument: naming the key, for a value that is neither, a
            quota out of range (at most the host's CPU count), or a pinned
            CPU the host does not have.
    """
    text = _str_or_number(key, value, "a number of CPUs such as 0.5 or a CPU set such as 0-1")
    cpus = host_cpus()
    if "-" in text[1:] or "," in text:
        try:
            pinned = parse_cpu_list(text)
        except ValueError as e:
            raise InvalidArgument(f"{key}: invalid CPU set {text!r}: {e}") from None
        missing = [c for c in pinned if c not in cpus]
        if missing:
            raise InvalidArgument(
                f"{key}: CPU {format_cpu_list(missing)} of {text!r} does not exist on this host",
                hint=f"this host's CPUs are {format_cpu_list(cpus)}",
            )
        # A single pinned CPU stays a range ("1-1"): a bare "1" means time.
        return format_cpu_list(pinned) if len(pinned) > 1 else f"{pinned[0]}-{pinned[0]}"
    try:
        quota = float(text)
    except ValueError:
        raise InvalidArgument(
            f"{key}: expected a number of CPUs (0.5, 2) or a CPU set (0-1,3), got {text!r}"
        ) from None
    if not math.isfinite(quota) or quota <= 0:
        raise InvalidArgument(f"{key}: must be more than 0 CPUs, got {text!r}")
    if quota < MIN_CPU:
        raise InvalidArgument(f"{key}: the least is {MIN_CPU} CPU, got {text!r}")
    if quota > len(cpus):
        raise InvalidArgument(
            f"{key}: {text} CPUs is more than this host has ({len(cpus)})",
            hint="a set of CPU numbers such as 0-1 pins the container to those CPUs",
        )
    # Stored as written, minus noise: 2.0 -> "2", 0.50 -> "0.5".
    return format(quota, "g")


def _int(key: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{key}: expected an integer, got {value!r}")
    try:
        n = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InvalidArgument(f"{key}: expected an integer, got {value!r}") from None
    if lo is not None and n < lo or hi is not None and n > hi:
        bounds = f"at least {lo}" if hi is None else f"in {lo}..{hi}"
        raise InvalidArgument(f"{key}: must be {bounds}, got {n}")
    return n


def parse_weight(key: str, value: object) -> int:
    """`limits.cpu.weight`: 1..10000.

    Raises:
        InvalidArgument: naming the key.
    """
    return _int(key, value, 1, MAX_WEIGHT)


def parse_processes(key: str, value: object) -> int | str:
    """`limits.processes`: an integer >= 1, or `max` (no limit).

    Raises:
        InvalidArgument: naming the key.
    """
    if isinstance(value, str) and value.strip().lower() == "max":
        return "max"
    try:
        return _int(key, value, 1)
    except InvalidArgument as e:
        raise InvalidArgument(e.message + " (or max for no limit)") from None


def parse_pty(key: str, value: object) -> int:
    """`limits.pty`: 1..1048576 ptys.

    Raises:
        InvalidArgument: naming the key.
    """
    return _int(key, value, 1, MAX_PTY)


def parse_ucount(key: str, value: object) -> int:
    """`limits.kernel.max_inotify_*`: 1..2147483647.

    Raises:
        InvalidArgument: naming the key.
    """
    return _int(key, value, 1, MAX_UCOUNT)


def parse_priority(key: str, value: object) -> int:
    """`boot.priority`, `boot.stop_priority`: any integer.

    Raises:
        InvalidArgument: naming the key.
    """
    return _int(key, value)


def parse_restart_max(key: str, value: object) -> int:
    """`boot.restart_max`: restarts allowed per minute, 1..1000.

    Raises:
        InvalidArgument: naming the key.
    """
    return _int(key, value, 1, 1000)


def parse_delay(key: str, value: object) -> float | int:
    """`boot.delay`: seconds, a number >= 0 (at most an hour).

    Raises:
        InvalidArgument: naming the key.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{key}: expected a number of seconds, got {value!r}")
    text = str(value).strip().removesuffix("s").strip()
    try:
        secs = float(text)
    except ValueError:
        raise InvalidArgument(f"{key}: expected a number of seconds, got {value!r}") from None
    if not math.isfinite(secs) or not 0 <= secs <= 3600:
        raise InvalidArgument(f"{key}: must be 0..3600 seconds, got {value!r}")
    return int(secs) if secs.is_integer() else secs


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


def parse_restart(key: str, value: object) -> str:
    """`boot.restart`: no, on-failure or always.

    Raises:
        InvalidArgument: naming the key.
    """
    # TOML reads a bare `no` as nothing, but `false` is a bool: take it as no.
    if value is False:
        return RestartPolicy.NO.value
    text = str(value).strip().lower()
    try:
        return RestartPolicy(text).value
    except ValueError:
        raise InvalidArgument(
            f"{key}: expected one of no, on-failure, always, got {value!r}"
        ) from None


# -- typed views of a container's config ------------------------------------


@dataclass(frozen=True)
class Limits:
    """A container's resource limits; None (or True for swap) = no limit."""

    memory: int | None = None
    # True: swap as the kernel allows; False: none; int: at most that many bytes.
    memory_swap: bool | int = True
    cpu_quota: float | None = None
    cpu_set: tuple[int, ...] | None = None
    cpu_weight: int | None = None
    processes: int | None = None
    # processes is the default, not asked for: a host without the pids
    # controller does without it rather than refusing the start.
    processes_default: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, host_mem: int | None = None) -> Limits:
        """The limits in a container's (validated) config.

        Args:
            config: the container's config mapping.
            host_mem: the host's RAM for percentages (default: /proc/meminfo).

        Raises:
            InvalidArgument: naming the key, for a value this host cannot
                honour (a stored pinned CPU that is not here any more).
        """
        kw: dict[str, object] = {}
        mem = config.get("limits.memory")
        if mem is not None:
            text = parse_memory("limits.memory", mem)
            if text.endswith("%"):
                total = host_memory() if host_mem is None else host_mem
                kw["memory"] = int(total * float(text[:-1]) / 100)
            else:
                kw["memory"] = parse_size(text, "limits.memory")
        swap = config.get("limits.memory.swap")
        if swap is not None:
            sw = parse_swap("limits.memory.swap", swap)
            kw["memory_swap"] = sw if isinstance(sw, bool) else parse_size(sw, "limits.memory.swap")
        cpu = config.get("limits.cpu")
        if cpu is not None:
            spec = parse_cpu("limits.cpu", cpu)
            if _is_number(spec):
                kw["cpu_quota"] = float(spec)
            else:
                kw["cpu_set"] = parse_cpu_list(spec)
        if config.get("limits.cpu.weight") is not None:
            kw["cpu_weight"] = parse_weight("limits.cpu.weight", config["limits.cpu.weight"])
        procs = config.get("limits.processes")
        if procs is None:
            kw["processes"] = default_processes()
            kw["processes_default"] = True
        else:
            n = parse_processes("limits.processes", procs)
            kw["processes"] = n if isinstance(n, int) else None
        return cls(**kw)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {
            "memory": self.memory,
            "memory_swap": self.memory_swap,
            "cpu_quota": self.cpu_quota,
            "cpu_set": list(self.cpu_set) if self.cpu_set is not None else None,
            "cpu_weight": self.cpu_weight,
            "processes": self.processes,
        }


@dataclass(frozen=True)
class KernelLimits:
    """A container's share of host-wide kernel tables that are not cgroup
    limits: set up when it starts (lxpy.runtime.launch)."""

    pty: int = DEFAULT_PTY
    # None: the host's per-user value (fs.inotify.max_user_*).
    inotify_instances: int | None = None
    inotify_watches: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> KernelLimits:
        """The kernel limits in a container's (validated) config.

        Raises:
            InvalidArgument: naming the key of a bad value.
        """
        kw: dict[str, int] = {}
        for key, attr, parse in (
            ("limits.pty", "pty", parse_pty),
            ("limits.kernel.max_inotify_instances", "inotify_instances", parse_ucount),
            ("limits.kernel.max_inotify_watches", "inotify_watches", parse_ucount),
        ):
            if config.get(key) is not None:
                kw[attr] = parse(key, config[key])
        return cls(**kw)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Boot:
    """When and how a container is started and stopped by lxpyd."""

    autostart: bool = False
    priority: int = 0
    delay: float = 0.0
    stop_priority: int = 0
    restart: RestartPolicy = RestartPolicy.NO
    restart_max: int = DEFAULT_RESTART_MAX

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Boot:
        """The boot settings in a container's (validated) config.

        Raises:
            InvalidArgument: naming the key of a bad value.
        """
        auto = config.get("boot.autostart", False)
        if not isinstance(auto, bool):
            text = str(auto).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise InvalidArgument(f"boot.autostart: expected true or false, got {auto!r}")
            auto = text in ("true", "1", "yes", "on")
        return cls(
            autostart=auto,
            priority=parse_priority("boot.priority", config.get("boot.priority", 0)),
            delay=float(parse_delay("boot.delay", config.get("boot.delay", 0))),
            stop_priority=parse_priority("boot.stop_priority", config.get("boot.stop_priority", 0)),
            restart=RestartPolicy(parse_restart("boot.restart", config.get("boot.restart", "no"))),
            restart_max=parse_restart_max(
                "boot.restart_max", config.get("boot.restart_max", DEFAULT_RESTART_MAX)
            ),
        )


def start_order(boots: Mapping[str, Boot]) -> list[str]:
    """Names of the autostart containers in start order: higher
    `boot.priority` first, then by name (a stable, predictable order)."""
    auto = [n for n, b in boots.items() if b.autostart]
    return sorted(auto, key=lambda n: (-boots[n].priority, n))


def stop_order(boots: Mapping[str, Boot]) -> list[str]:
    """Names in shutdown order: higher `boot.stop_priority` first, then by name."""
    return sorted(boots, key=lambda n: (-boots[n].stop_priority, n))


_EXIT_STATUS = re.compile(r"exited with status (-?\d+)")


def wants_restart(policy: RestartPolicy, last_exit: Mapping[str, object] | None) -> bool:
    """Whether a container that ended with `last_exit` (the monitor's record:
    reason, detail, stopped) should be started again under `policy`.

    A stop asked for through lxpy never restarts. `on-failure` restarts after
    a crash: init killed by a signal, a non-zero exit, or a failed relaunch;
    not after a power-off from inside or init exiting 0. `always` restarts
    after any end that lxpy did not ask for.
    """
    if policy is RestartPolicy.NO or last_exit is None or last_exit.get("stopped"):
        return False
    if policy is RestartPolicy.ALWAYS:
        return True
    reason = last_exit.get("reason")
    if reason in ("killed", "error"):
        return True
    if reason == "exited":
        m = _EXIT_STATUS.search(str(last_exit.get("detail", "")))
        return m is None or int(m.group(1)) != 0
    return False


@dataclass
class RestartBudget:
    """At most `max_restarts` restarts in any `window` seconds.

    The daemon keeps one per container and asks `allow(now)` before each
    restart; a refusal means "leave it in ERROR", with `reason()` saying why.
    """

    max_restarts: int = DEFAULT_RESTART_MAX
    window: float = RESTART_WINDOW
    times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        """Record a restart at `now` (monotonic seconds) if the budget allows it."""
        self.times = [t for t in self.times if now - t < self.window]
        if len(self.times) >= self.max_restarts:
            return False
        self.times.append(now)
        return True

    def reason(self) -> str:
        return (
            f"restarted {len(self.times)} times within {self.window:g} seconds "
            f"(boot.restart_max = {self.max_restarts}); not restarting again"
        )
