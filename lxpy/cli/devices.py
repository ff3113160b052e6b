"""`lxpy device add`, `remove`, `list` and `show`; `lxpy volume create`,
`list` and `delete`."""

from __future__ import annotations

from lxpy.cli.output import print_json, print_table, yes_no
from lxpy.cli.parse import NAME, UsageError, arg, command, each

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from lxpy.api.client import Client


DEV = arg("device", metavar="DEV", help="device name")

# Device types and their keys, for completion and help (lxpyd judges them:
# lxpy.daemon.devices).
DEVICE_KEYS: dict[str, tuple[str, ...]] = {
    "disk": ("source", "path", "readonly", "shift", "required", "pool"),
    "proxy": ("listen", "connect"),
    "unix-char": ("source", "path", "uid", "gid", "mode"),
    "unix-block": ("source", "path", "uid", "gid", "mode"),
    "nic": ("nictype", "network", "parent", "name", "hwaddr", "ipv4.address"),
}


def device_line(dev: dict[str, Any]) -> str:
    """`key=value ...` of a device's config, for lists and `lxpy info`."""
    config = dev.get("config") or {}
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


@command(
    "device add",
    "add a device to a container (a running one gets it at once)",
    NAME,
    DEV,
    arg("type", metavar="TYPE", help="device type: " + ", ".join(DEVICE_KEYS)),
    # No argparse type: a line of plain words takes the fast path
    # (lxpy.cli.parse._fast_args); the words are split here.
    arg(
        "config",
        nargs="*",
        metavar="KEY=VALUE",
        help="the device's keys, e.g. source=/srv/www path=/var/www readonly=true",
    ),
    formats=True,
)
def cmd_device_add(client: Client, args: argparse.Namespace) -> None:
    config = {}
    for word in args.config:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise UsageError(
                f"expected KEY=VALUE, got {word!r}", "", "lxpy device add", "e.g. path=/srv/www"
            )
        config[key] = value
    dev = client.add_device(args.name, args.device, args.type, config)
    if args.format == "json":
        print_json(dev)
        return
    live = " (in effect now)" if dev.get("active") else ""
    print(f"added {args.type} device {args.device} to {args.name}{live}")


@command(
    "device remove",
    "remove a device from a container (from a running one at once)",
    NAME,
    arg("devices", nargs="+", metavar="DEV", help="device name(s)"),
)
def cmd_device_remove(client: Client, args: argparse.Namespace) -> None:
    def remove(dev: str) -> None:
        client.remove_device(args.name, dev)
        print(f"removed device {dev} from {args.name}")

    each(args.devices, remove)


@command("device list", "list a container's devices", NAME, formats=True)
def cmd_device_list(client: Client, args: argparse.Namespace) -> None:
    devs = client.devices(args.name)
    if args.format == "json":
        print_json(devs)
        return
    print_table(
        ("NAME", "TYPE", "ACTIVE", "CONFIG"),
        (
            (
                d.get("name", ""),
                d.get("type", ""),
                yes_no(d.get("active")),
                device_line(d),
            )
            for d in devs
        ),
    )


@command("device show", "show one device of a container", NAME, DEV, formats=True)
def cmd_device_show(client: Client, args: argparse.Namespace) -> None:
    dev = client.device(args.name, args.device)
    if args.format == "json":
        print_json(dev)
        return
    print(f"name: {dev.get('name', '')}")
    print(f"type: {dev.get('type', '')}")
    print(f"active: {'yes' if dev.get('active') else 'no'}")
    for k, v in sorted((dev.get("config") or {}).items()):
        print(f"{k}: {v}")


VOLUMES = arg("volumes", nargs="+", metavar="VOLUME", help="volume name(s)")


@command(
    "volume create",
    "create an empty custom volume (mount it with: device add NAME DEV disk pool=default "
    "source=VOLUME path=...)",
    arg("volume", metavar="VOLUME", help="volume name"),
    formats=True,
)
def cmd_volume_create(client: Client, args: argparse.Namespace) -> None:
    vol = client.create_volume(args.volume)
    if args.format == "json":
        print_json(vol)
    else:
        print(f"created volume {args.volume}")


@command("volume list", "list custom volumes and the containers using them", formats=True)
def cmd_volume_list(client: Client, args: argparse.Namespace) -> None:
    vols = client.volumes()
    if args.format == "json":
        print_json(vols)
        return
    print_table(
        ("NAME", "USED BY"),
        ((v.get("name", ""), ", ".join(v.get("used_by") or ()) or "-") for v in vols),
    )


@command("volume delete", "delete custom volumes with their files (not while in use)", VOLUMES)
def cmd_volume_delete(client: Client, args: argparse.Namespace) -> None:
    def delete(vol: str) -> None:
        client.delete_volume(vol)
        print(f"deleted volume {vol}")

    each(args.volumes, delete)
