"""`lxpy config show`, `set` and `unset`."""

from __future__ import annotations

from lxpy.cli.output import format_value, print_json
from lxpy.cli.parse import NAME, arg, command
from lxpy.errors import NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from lxpy.api.client import Client


@command(
    "config show",
    "print a container's configuration as `key = value` lines",
    NAME,
    arg("key", metavar="KEY", nargs="?", help="print only this key's value"),
    formats=True,
)
def cmd_config_show(client: Client, args: argparse.Namespace) -> None:
    config = client.container(args.name).get("config") or {}
    if args.key is not None:
        if args.key not in config:
            raise NotFound(
                f"container {args.name!r} has no config key {args.key!r} set",
                hint=f"`lxpy config show {args.name}` lists the keys that are set",
            )
        config = {args.key: config[args.key]}
        if args.format != "json":
            print(format_value(config[args.key]))
            return
    if args.format == "json":
        print_json(config)
        return
    for key in sorted(config):
        print(f"{key} = {format_value(config[key])}")


def _say_deferred(name: str, answer: dict[str, Any]) -> None:
    # The daemon lists what a running container gets only at its next start.
    keys = answer.get("deferred") or []
    if keys:
        verb = "takes" if len(keys) == 1 else "take"
        print(
            f"{', '.join(keys)} {verb} effect at the next start of {name} "
            f"(`lxpy restart {name}` restarts it now)"
        )


@command(
    "config set",
    "set one configuration key",
    NAME,
    arg("key", metavar="KEY"),
    arg("value", metavar="VALUE"),
)
def cmd_config_set(client: Client, args: argparse.Namespace) -> None:
    _say_deferred(args.name, client.update_config(args.name, set_={args.key: args.value}))


@command("config unset", "remove one configuration key", NAME, arg("key", metavar="KEY"))
def cmd_config_unset(client: Client, args: argparse.Namespace) -> None:
    _say_deferred(args.name, client.update_config(args.name, unset=[args.key]))
