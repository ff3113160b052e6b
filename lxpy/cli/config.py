"""`lxpy config show`, `set`, `unset` and `keys`."""

from __future__ import annotations

from lxpy.api.text import format_value
from lxpy.cli.output import print_json, print_table
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


def config_keys() -> list[dict[str, Any]]:
    """Every config key (and key family, `environment.*`) with its meaning
    and whether a change reaches a running container at once.

    From this lxpy's own table (lxpy.model.config), imported only here:
    the keys are known without lxpyd, and other commands skip the import.
    """
    from lxpy.model.config import KEYS, PREFIXES

    return [
        {"key": k.name, "live": k.live, "meaning": k.doc}
        for k in [*KEYS.values(), *PREFIXES.values()]
    ]


def _when(live: object) -> str:
    return "at once" if live else "next start"


def _keys_help() -> str:
    import shutil
    import textwrap

    keys = config_keys()
    width = max(len(k["key"]) for k in keys) + 2
    # Wrapped to the terminal as argparse wraps the rest of the help.
    room = max(30, shutil.get_terminal_size().columns - width - 4)
    lines = [
        "The value is checked before it is saved: a network, an init or an address",
        "it names must exist (or be free) now, not at the next start.",
        "",
        "Keys (a running container gets the ones marked * at once, the others at",
        "its next start; `lxpy config keys` prints them as a table or JSON):",
    ]
    for k in keys:
        mark = "*" if k["live"] else " "
        text = textwrap.wrap(k["meaning"], room) or [""]
        lines.append(f"  {mark}{k['key'].ljust(width)}{text[0]}")
        lines += [" " * (width + 3) + t for t in text[1:]]
    return "\n".join(lines)


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
    arg("key", metavar="KEY", help="the key (listed below)"),
    arg("value", metavar="VALUE", help="its value, checked now"),
    epilog=_keys_help,
)
def cmd_config_set(client: Client, args: argparse.Namespace) -> None:
    _say_deferred(args.name, client.update_config(args.name, set_={args.key: args.value}))


@command("config unset", "remove one configuration key", NAME, arg("key", metavar="KEY"))
def cmd_config_unset(client: Client, args: argparse.Namespace) -> None:
    _say_deferred(args.name, client.update_config(args.name, unset=[args.key]))


@command("config keys", "list the configuration keys with their meaning", formats=True)
def cmd_config_keys(client: Client, args: argparse.Namespace) -> None:
    keys = config_keys()
    if args.format == "json":
        print_json(keys)
        return
    print_table(
        ("KEY", "APPLIES", "MEANING"), ((k["key"], _when(k["live"]), k["meaning"]) for k in keys)
    )
