"""What every device type is: its keys, and what it does at each moment of
a container's life.

A type is a subclass of DeviceType in a module of its own
(lxpy.daemon.devices.disk, ...), registered in lxpy.daemon.devices:

    KEYS      each key it takes, with its parser and documentation; the
              generic validate() refuses any other key, a missing
              required one and a bad value, naming it;
    check     what the host must hold for it (a source that exists);
    start     before the container's init runs: what goes into its launch
              (StartPlan), with the undo of each host change;
    started   once init runs (rules that need its pid);
    plug      into a running container at once (hot-plug), when the type
              can (HOTPLUG); unplug takes it out again;
    adopted   a running container found by a new lxpyd (daemon_ready once
              all are);
    stop      after the container stopped: release what start took;
    forget    when the device or its container is removed for good.

Every method gets the DeviceHost (the daemon's shared state and the peers
devices use) and the container's name; none may block the event loop
(blocking work goes through h.d.files / trio.to_thread).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from lxpy.errors import InvalidArgument, Unsupported
from lxpy.model.suggest import did_you_mean
from lxpy.revert import AsyncRevert

if TYPE_CHECKING:
    import trio

    from lxpy.daemon.networks import Networks
    from lxpy.daemon.state import Daemon
    from lxpy.daemon.volumes import Volumes

Parser = Callable[[str, str], str]


@dataclass(frozen=True)
class DeviceHost:
    """What a device type works with: the daemon's shared state and the
    peers of the devices service (lxpy.daemon.devices.service)."""

    d: Daemon
    networks: Networks
    volumes: Volumes
    # Where long-lived device tasks (a proxy's forwarder) run.
    nursery: trio.Nursery
    # The devices in effect in each running container (Devices.active).
    active: dict[str, set[str]]


def text(key: str, value: str) -> str:
    """Any single line of text (the model checked that already)."""
    return value


def keyed(check: Callable[[str], object]) -> Parser:
    """A parser from a checker of values whose errors do not name the key
    (`check(value)` returns the value to store, or raises InvalidArgument)."""

    def parse(key: str, value: str) -> str:
        try:
            return str(check(value))
        except InvalidArgument as e:
            raise InvalidArgument(f"{key}: {e.message}", e.hint) from None

    return parse


def boolean(key: str, value: str) -> str:
    """true or false (1/0, yes/no, on/off accepted), stored as true/false."""
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return "true"
    if low in ("false", "0", "no", "off"):
        return "false"
    raise InvalidArgument(f"{key}: expected true or false, got {value!r}")


def is_true(options: Mapping[str, str], key: str, default: bool) -> bool:
    """A boolean key's value (as boolean() stored it), or `default`."""
    value = options.get(key)
    return default if value is None else value == "true"


@dataclass(frozen=True)
class Key:
    """One key of a device type."""

    parse: Parser
    doc: str
    required: bool = False


@dataclass
class Dev:
    """One device of one container, as the type's methods get it."""

    container: str
    name: str
    options: Mapping[str, str]

    @property
    def label(self) -> str:
        return f"device {self.name!r} of container {self.container!r}"


@dataclass
class StartPlan:
    """What the devices add to a start (filled by each type's start())."""

    # Mounts made by the launch path before init runs
    # (lxpy.runtime.spec.LaunchSpec.mounts).
    mounts: list[dict[str, object]] = field(default_factory=list)
    # How to reverse each host change made for the start (run on a failure
    # while the devices are set up, or later by DeviceService.undo_start).
    undos: AsyncRevert = field(default_factory=lambda: AsyncRevert("devices' start"))
    # Devices actually set up (a `required=false` disk without its source
    # is not).
    active: set[str] = field(default_factory=set)


class DeviceType:
    """The base of every device type; see the module docstring."""

    NAME: ClassVar[str] = ""
    DOC: ClassVar[str] = ""
    KEYS: ClassVar[Mapping[str, Key]] = {}
    # Whether it can be added to (and removed from) a running container.
    HOTPLUG: ClassVar[bool] = False

    # -- judging -----------------------------------------------------------
    def validate(self, dev: str, options: Mapping[str, str]) -> dict[str, str]:
        """The device's options with every value parsed (type included).

        Raises:
            InvalidArgument: an unknown key, a missing required one or a
                bad value, naming the device and the key.
        """
        out = {"type": self.NAME}
        for key, value in options.items():
            if key == "type":
                continue
            decl = self.KEYS.get(key)
            if decl is None:
                near = did_you_mean(key, list(self.KEYS))
                known = ", ".join(sorted(self.KEYS))
                raise InvalidArgument(
                    f"device {dev!r}: {self.NAME} devices take no key {key!r}",
                    hint=(f"{near}; " if near else "") + f"{self.NAME} keys: {known}",
                )
            try:
                out[key] = decl.parse(key, value)
            except InvalidArgument as e:
                raise InvalidArgument(f"device {dev!r}: {e.message}", e.hint) from None
        missing = [k for k, decl in self.KEYS.items() if decl.required and k not in out]
        if missing:
            raise InvalidArgument(
                f"device {dev!r}: a {self.NAME} device needs {', '.join(missing)}",
                hint=f"e.g. lxpy device add NAME {dev} {self.NAME} "
                + " ".join(f"{k}=..." for k in missing),
            )
        self.check_options(dev, out)
        return out

    def check_options(self, dev: str, options: Mapping[str, str]) -> None:
        """Rules between keys (one excludes another); the model's part only.

        Raises:
            InvalidArgument: naming the device and the keys.
        """

    async def check(self, h: DeviceHost, dev: Dev) -> None:
        """What the host must hold for the device (its source exists), and
        that it does not clash with the container's other devices.

        Raises:
            InvalidArgument, NotFound: naming the device and the key.
        """

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        """Why a restricted user may not add this device (None: they may).
        By default no type is theirs: devices reach the host."""
        return f"{self.NAME} devices reach the host's resources"

    def describe(self, dev: Dev) -> str:
        """One line for `lxpy device list` and `lxpy info`."""
        return " ".join(f"{k}={v}" for k, v in dev.options.items() if k != "type")

    # -- a container's life ------------------------------------------------
    async def start(self, h: DeviceHost, dev: Dev, plan: StartPlan) -> None:
        """Set the device up for a start, before init runs."""
        plan.active.add(dev.name)

    async def started(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        """The container's init runs as host pid `pid`."""

    async def plug(self, h: DeviceHost, dev: Dev, pid: int) -> bool | None:
        """Add the device to the running container whose init is host pid
        `pid`; False when it is not in effect after all (a disk whose
        source is missing and not required), else None or True.

        Raises:
            Unsupported: the type cannot be hot-plugged.
        """
        raise self.not_live(dev, "added to")

    async def unplug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        """Take the device out of the running container (init: host pid `pid`).

        Raises:
            Unsupported: the type cannot be hot-unplugged.
        """
        raise self.not_live(dev, "removed from")

    def not_live(self, dev: Dev, verb: str) -> Unsupported:
        """The answer of a type that cannot be `verb` a running container."""
        return Unsupported(
            f"{self.NAME} devices cannot be {verb} a running container",
            hint=f"stop container {dev.container!r} first, change it, and start it again",
        )

    async def rebooted(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        """The container rebooted inside: a new init (host pid `pid`) under
        the same monitor, in a new mount namespace. Set up again what lived
        only there (the monitor mounts again what the start planned)."""

    async def adopted(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        """The running container (init: host pid `pid`) was found by a new
        lxpyd: make again what died with the last one (a proxy's forwarder)."""

    async def daemon_ready(self, h: DeviceHost) -> None:
        """lxpyd has adopted its running containers: settle host state of
        the type's own that outlives lxpyd (a proxy's DNAT table)."""

    async def stop(self, h: DeviceHost, dev: Dev) -> None:
        """Release what start() took, once the container has stopped."""

    async def forget(self, h: DeviceHost, dev: Dev) -> None:
        """The device (or its container) is removed for good."""
