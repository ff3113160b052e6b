"""What restricted users (group `lxpy-user`) may do through the API.

Admins (root and group `lxpy`) may do everything, which is root on the
host: they may make privileged containers. Restricted users get the routes
in USER_ROUTES and no other, so a route added later is refused to them
until it is named here. On the routes they get:

* containers are theirs only: made by them (the record's owner is their
  uid, made in the restricted tier). Any other container does not exist
  for them (404, as for a name never used), and lists, network views and
  the event stream leave it out;
* config keys are an allow-list (USER_KEYS, USER_PREFIXES): never
  `security.*`, `raw.*` or anything that reaches host paths; a key family
  added later (devices) falls outside it until named here. Checked on
  create (`--set`), on set and unset, and on copy (the source's keys);
* devices: they may list and show their containers' devices, and remove
  them; they may add only a device whose type says it reaches nothing of
  the host's (DeviceType.restricted_reason), which no type of lxpy's says
  yet (a disk mounts host paths or shared volumes). A copy of a container
  with such a device is refused to them too;
* templates, networks and the server are read-only: no build, delete,
  network create or delete, stop-all, and no operations (the builds);
* images and remotes are read-only: they may list them and create from
  a cached image, but not pull (a download fills the host's pool with
  what a server sends), publish, delete, or add or remove remotes.

Every refusal is a 403 that names what and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum

from lxpy.daemon.devices import TYPES
from lxpy.daemon.http import Request, Route
from lxpy.daemon.peers import Caller
from lxpy.errors import Forbidden, InvalidArgument, NotFound
from lxpy.model.config import Container, Owner
from lxpy.model.limits import DEFAULT_PROCESSES_SHARE, default_processes, parse_processes
from lxpy.model.suggest import not_found_hint

# Keys that configure the container itself and reach nothing of the host's
# beyond what every unprivileged container has.
USER_KEYS = frozenset(
    {
        "description",
        "hostname",
        "init",
        "init.args",
        "halt_signal",
        "reboot_signal",
        "network",
        "ipv4.address",
        "limits.memory",
        "limits.memory.swap",
        "limits.cpu",
        "limits.cpu.weight",
        "limits.processes",
        "boot.autostart",
        "boot.restart",
        "boot.restart_max",
    }
)
USER_PREFIXES = ("environment.", "user.")


class Rule(Enum):
    # Shared things to read; lists and views are filtered by the handler.
    ANY = "any"
    # The container {name} must be the caller's.
    OWN = "own"
    # Create: the keys of the body's config.
    CREATE = "create"
    # Set and unset keys of the caller's container {name}.
    CONFIG = "config"
    # Copy the caller's container {name}: its keys, as for a create.
    COPY = "copy"
    # Add a device to the caller's container {name}: its type and keys.
    DEVICE = "device"


_C = "/1.0/containers/{name}"
USER_ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/1.0"): Rule.ANY,
    ("GET", "/1.0/openapi.json"): Rule.ANY,
    ("GET", "/1.0/templates"): Rule.ANY,
    ("GET", "/1.0/templates/{name}"): Rule.ANY,
    ("GET", "/1.0/images"): Rule.ANY,
    ("GET", "/1.0/images/{ref}"): Rule.ANY,
    ("GET", "/1.0/remotes"): Rule.ANY,
    ("GET", "/1.0/remotes/{name}/images"): Rule.ANY,
    ("GET", "/1.0/networks"): Rule.ANY,
    ("GET", "/1.0/networks/{name}"): Rule.ANY,
    ("GET", "/1.0/events"): Rule.ANY,
    ("GET", "/1.0/containers"): Rule.ANY,
    ("POST", "/1.0/containers"): Rule.CREATE,
    ("GET", _C): Rule.OWN,
    ("DELETE", _C): Rule.OWN,
    ("PATCH", _C + "/config"): Rule.CONFIG,
    ("POST", _C + "/rename"): Rule.OWN,
    ("POST", _C + "/copy"): Rule.COPY,
    ("GET", _C + "/snapshots"): Rule.OWN,
    ("POST", _C + "/snapshots"): Rule.OWN,
    ("POST", _C + "/snapshots/{snap}/restore"): Rule.OWN,
    ("DELETE", _C + "/snapshots/{snap}"): Rule.OWN,
    ("POST", _C + "/start"): Rule.OWN,
    ("POST", _C + "/stop"): Rule.OWN,
    ("POST", _C + "/restart"): Rule.OWN,
    ("POST", _C + "/freeze"): Rule.OWN,
    ("POST", _C + "/unfreeze"): Rule.OWN,
    ("GET", _C + "/stats"): Rule.OWN,
    ("GET", _C + "/console/log"): Rule.OWN,
    ("GET", _C + "/console"): Rule.OWN,
    ("POST", _C + "/exec"): Rule.OWN,
    # Their own container's files, config and snapshots, to their own
    # file. Import stays the admins': a backup is a record made elsewhere,
    # whose keys and files nobody here has judged.
    ("GET", _C + "/export"): Rule.OWN,
    ("GET", _C + "/devices"): Rule.OWN,
    ("POST", _C + "/devices"): Rule.DEVICE,
    ("GET", _C + "/devices/{dev}"): Rule.OWN,
    ("DELETE", _C + "/devices/{dev}"): Rule.OWN,
}


def owner_of(caller: Caller) -> Owner:
    """The owner recorded for a container `caller` makes (or copies)."""
    return Owner(caller.uid, caller.restricted)


def key_allowed(key: str) -> bool:
    """Whether a restricted user may set or unset config key `key`."""
    return key in USER_KEYS or any(key.startswith(p) and len(key) > len(p) for p in USER_PREFIXES)


class Policy:
    """The decisions of this module, over the daemon's container records."""

    def __init__(self, records: Callable[[], Mapping[str, Container]]) -> None:
        self._records = records

    def sees(self, caller: Caller, name: str) -> bool:
        """Whether container `name` exists for `caller`."""
        if not caller.restricted:
            return True
        record = self._records().get(name)
        owner = record.owner if record is not None else None
        return owner is not None and owner.restricted and owner.uid == caller.uid

    def visible(self, caller: Caller, names: Iterable[str]) -> list[str]:
        """Those of `names` that exist for `caller`."""
        return [n for n in names if self.sees(caller, n)]

    def authorize(self, route: Route, req: Request) -> None:
        """Refuse `req` (matched to `route`) when its caller may not make it.

        Raises:
            Forbidden: a restricted caller, a route or a key not allowed to them.
            NotFound: a restricted caller names a container not theirs.
            InvalidArgument: a body that cannot be judged (not JSON).
        """
        caller = req.caller
        if not caller.restricted:
            return
        rule = USER_ROUTES.get((route.method, route.pattern))
        if rule is None:
            raise Forbidden(
                f"{_restricted(caller)} may not use {route.method} {route.pattern}",
                hint=f"{route.summary}: only root and members of group {caller.groups.admin!r} may",
            )
        if rule is Rule.ANY:
            return
        if rule is Rule.CREATE:
            image = req.json().get("image")
            if isinstance(image, str) and ":" in image:
                # A download fills the host's pool with what the server sends.
                raise Forbidden(
                    f"{_restricted(caller)} may not download images ({image})",
                    hint=f"create from a cached image (`lxpy image list`); a member of "
                    f"group {caller.groups.admin!r} may pull it first (`lxpy image pull {image}`)",
                )
            config = req.json().get("config") or {}
            if not isinstance(config, dict):
                raise InvalidArgument(f"'config' must be an object of key: value, got {config!r}")
            self.check_keys(caller, config, "set")
            check_values(caller, config)
            return
        name = req.params["name"]
        if not self.sees(caller, name):
            # Suggested from their own names only: others' do not exist for them.
            mine = self.visible(caller, self._records())
            raise NotFound(
                f"container {name!r} not found",
                hint=not_found_hint(name, mine, "your containers", "`lxpy list`"),
            )
        if rule is Rule.CONFIG:
            body = req.json()
            set_, unset = body.get("set") or {}, body.get("unset") or []
            if isinstance(set_, dict):
                self.check_keys(caller, set_, "set")
                check_values(caller, set_)
            if isinstance(unset, list):
                self.check_keys(caller, [k for k in unset if isinstance(k, str)], "unset")
        elif rule is Rule.DEVICE:
            body = req.json()
            kind, config = body.get("type"), body.get("config") or {}
            if isinstance(kind, str) and isinstance(config, dict):
                check_device(caller, str(body.get("name")), {**config, "type": kind})
        elif rule is Rule.COPY:
            for dev, options in self._records()[name].devices.items():
                check_device(caller, dev, options, f"copy container {name!r} with ")
            source = self._records()[name].config
            check_values(caller, source)
            bad = sorted(k for k in source if not key_allowed(k))
            if bad:
                raise Forbidden(
                    f"{_restricted(caller)} may not copy container {name!r}: its config "
                    f"sets {', '.join(bad)}, which they may not set",
                    hint=f"ask a member of group {caller.groups.admin!r} to copy it",
                )

    def check_keys(self, caller: Caller, keys: Iterable[str], verb: str) -> None:
        """Raise Forbidden for the first of `keys` a restricted `caller` may not `verb`."""
        for key in keys:
            if caller.restricted and not key_allowed(key):
                raise Forbidden(
                    f"{_restricted(caller)} may not {verb} {key}: "
                    + _why(key, caller.groups.admin),
                    hint="they may set: "
                    + ", ".join([*sorted(USER_KEYS), *(p + "*" for p in USER_PREFIXES)]),
                )

    def event_filter(self, caller: Caller) -> Callable[[Mapping[str, object]], bool]:
        """Which events of the stream `caller` gets: all for admins; for a
        restricted user, lifecycle events of their containers only."""
        if not caller.restricted:
            return lambda event: True
        # Names seen as theirs, so that the deletion of one (its record
        # gone by the time the event is sent) still reaches them.
        theirs = set(self.visible(caller, self._records()))

        def wanted(event: Mapping[str, object]) -> bool:
            resource = str(event.get("resource", ""))
            if event.get("type") != "lifecycle" or not resource.startswith("containers/"):
                return False
            name = resource.removeprefix("containers/")
            action = event.get("action")
            if self.sees(caller, name):
                theirs.add(name)
                data = event.get("data")
                if action == "container-renamed" and isinstance(data, Mapping):
                    # The old name is free for anyone's container now.
                    theirs.discard(str(data.get("old")))
                return True
            if name in theirs and name not in self._records():
                # Theirs until it was deleted (its record is gone before
                # the event is sent).
                if action == "container-deleted":
                    theirs.discard(name)
                return True
            # The name is someone else's now.
            theirs.discard(name)
            return False

        return wanted

    def network_view(
        self, caller: Caller, net: dict[str, object], macs: Callable[[str], Iterable[str]]
    ) -> dict[str, object]:
        """A network object as `caller` may see it: a restricted user sees
        only their containers among its users and leases (`macs(name)`:
        the MAC addresses of container `name`'s NICs)."""
        if not caller.restricted:
            return net
        view = dict(net)
        used = net.get("used_by")
        if isinstance(used, list):
            view["used_by"] = self.visible(caller, used)
        leases = net.get("leases")
        if isinstance(leases, list):
            mine = {m for name in self.visible(caller, self._records()) for m in macs(name)}
            view["leases"] = [le for le in leases if isinstance(le, dict) and le.get("mac") in mine]
        return view


def check_values(caller: Caller, config: Mapping[str, object]) -> None:
    """Raise Forbidden when a restricted `caller` would lift a bound that
    holds for the host's sake: `limits.processes` above its default (the
    share of the host's PIDs that keeps a fork bomb from taking them all).
    A value that does not parse is left to the config's own check."""
    if not caller.restricted or "limits.processes" not in config:
        return
    try:
        wanted = parse_processes("limits.processes", config["limits.processes"])
    except InvalidArgument:
        return
    cap = default_processes()
    if wanted == "max" or (isinstance(wanted, int) and wanted > cap):
        raise Forbidden(
            f"{_restricted(caller)} may not set limits.processes above {cap}, "
            f"the default ({DEFAULT_PROCESSES_SHARE:.0%} of the host's PIDs)",
            hint=f"a lower value is fine; above it, ask a member of group {caller.groups.admin!r}",
        )


def check_device(
    caller: Caller, dev: str, options: Mapping[str, object], verb: str = "add "
) -> None:
    """Raise Forbidden when a restricted `caller` may not add device `dev`
    (its type's judgement; an unknown type is left to the device's check)."""
    t = TYPES.get(str(options.get("type")))
    if t is None:
        return
    reason = t.restricted_reason({k: str(v) for k, v in options.items()})
    if reason:
        raise Forbidden(
            f"{_restricted(caller)} may not {verb}{t.NAME} device {dev!r}: {reason}",
            hint=f"ask a member of group {caller.groups.admin!r} to add it",
        )


def _restricted(caller: Caller) -> str:
    return f"restricted users (group {caller.groups.user})"


def _why(key: str, admin: str) -> str:
    if key == "security.nesting":
        # Not a way to host root, but a wider reach into the host kernel
        # (fresh proc and sysfs, FUSE, TUN, nested namespaces and
        # filesystems: docs/security.md, "Nesting"): an admin's call, as
        # Incus leaves it to restricted.containers.nesting.
        return (
            "nesting widens what the container reaches of the host kernel (fresh proc and "
            f"sysfs, FUSE, TUN, nested runtimes); only root and group {admin} may"
        )
    if key.startswith("security."):
        return f"security keys can make a container host root; only root and group {admin} may"
    if key.startswith("raw."):
        return f"raw keys reach the host unchecked; only root and group {admin} may"
    return f"it is not one of the keys restricted users may set; root and group {admin} may"
