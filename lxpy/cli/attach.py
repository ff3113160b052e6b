"""`lxpy console` and `lxpy exec`: into a running container."""

from __future__ import annotations

import sys

from lxpy.cli.parse import NAME, REMAINDER, arg, command, new_parser

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


@command(
    "console",
    "attach to a container's console (detach with Ctrl-a q), or print its log",
    NAME,
    arg("--log", action="store_true", help="print the console output kept since boot"),
)
def cmd_console(client: Client, args: argparse.Namespace) -> int | None:
    if args.log:
        text = client.console_log(args.name)
        sys.stdout.write(text)
        if text and not text.endswith("\n"):
            sys.stdout.write("\n")
        return None
    # Imported here: the interactive console needs terminal handling that
    # the other commands do not.
    from lxpy.api.streams import interactive_console

    return interactive_console(client, args)


_EXEC_OPTIONS = (
    arg(
        "-t",
        "--tty",
        dest="tty",
        action="store_const",
        const=True,
        default=None,
        help="give the command a terminal (the default when stdin is one)",
    ),
    arg(
        "-T",
        "--no-tty",
        dest="tty",
        action="store_const",
        const=False,
        help="plain pipes: stdout and stderr kept apart",
    ),
    arg(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a variable (repeatable); the environment is otherwise clean",
    ),
    arg("--cwd", metavar="DIR", help="working directory (default: the user's home, else /)"),
    arg("--user", metavar="USER", help="user name or uid in the container (default: root)"),
)


@command(
    "exec",
    "run a command in a running container; exits with the command's status",
    NAME,
    *_EXEC_OPTIONS,
    arg("command", nargs=REMAINDER, metavar="-- CMD ...", help="the command"),
)
def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    # argparse's REMAINDER takes everything after NAME, options included
    # (`lxpy exec web -t -- sh`): parse those options out of it here.
    rest = new_parser(prog="lxpy exec", add_help=False)
    for flags, kwargs in _EXEC_OPTIONS:
        rest.add_argument(*flags, **{**kwargs, "default": None})
    rest.add_argument("command", nargs=REMAINDER)
    more = rest.parse_args(args.command)
    if more.tty is not None:
        args.tty = more.tty
    args.env = [*args.env, *(more.env or [])]
    args.cwd = more.cwd or args.cwd
    args.user = more.user or args.user
    args.command = more.command
    # Imported here, as for the console: only these two commands need it.
    from lxpy.api.streams import run_exec

    return run_exec(client, args)
