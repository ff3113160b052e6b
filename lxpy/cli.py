"""The `lxpy` command: parse the command line, call lxpyd, print the answer.

A thin client: every decision is the daemon's (docs/api.md). Commands are
rows of one table (COMMANDS, filled by the @command decorator), so adding
one is a function and a decorator. Every failure leaves through fail():
`error: ...` and `hint: ...` on stderr, status 1 (2 for usage errors, 130
for Ctrl-C), never a traceback for an LxpyError.

Imports are kept to the standard library's cheap modules and lxpy.api: the
CLI starts, asks and prints within a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sys
import time

from lxpy import __version__
from lxpy.api import wire
from lxpy.api.client import Client
from lxpy.api.text import format_value, owner_text
from lxpy.errors import Cancelled, LxpyError, NotFound, from_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    Handler = Callable[[Client, argparse.Namespace], int | None]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- exits -------------------------------------------------------------------


def fail(message: str, hint: str | None = None, status: int = EXIT_ERROR) -> int:
    """Print `error: MESSAGE` (and `hint: HINT`) to stderr; return the exit status."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return status


class UsageError(Exception):
    """A bad command line, found by argparse."""

    def __init__(self, message: str, usage: str, prog: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.prog = prog


_PARSER_CLASS: Any = None


def new_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser whose errors raise UsageError.

    Why argparse is imported here and not at the top: with `re`, `enum`,
    `gettext` and `shutil` behind it, it is a third of a short command's
    run time, and the commonest command lines never need it (_fast_args).
    """
    global _PARSER_CLASS
    if _PARSER_CLASS is None:
        import argparse

        class _Parser(argparse.ArgumentParser):
            # argparse prints and exits on its own; route its errors through
            # fail() so every error of the CLI looks the same.
            def error(self, message: str) -> Any:  # type: ignore[override]
                raise UsageError(message, self.format_usage(), self.prog)

        _PARSER_CLASS = _Parser
    return _PARSER_CLASS(**kwargs)  # type: ignore[no-any-return]


# -- the command table ---------------------------------------------------------


class Command:
    """One row of the table: `path` is ("create",) or ("snapshot", "create")."""

    __slots__ = ("path", "help", "args", "run", "formats")

    def __init__(
        self,
        path: tuple[str, ...],
        help: str,
        args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...],
        run: Handler,
        formats: bool,
    ) -> None:
        self.path = path
        self.help = help
        self.args = args
        self.run = run
        self.formats = formats


COMMANDS: list[Command] = []

# Stand-ins, in the table, for argparse's REMAINDER (its own value) and
# BooleanOptionalAction (swapped in by build_parser), so that building the
# table needs no argparse.
REMAINDER = "..."
BOOLEAN_OPTIONAL = "boolean-optional"

# Help for commands that only group subcommands.
GROUPS = {
    "config": "show and change a container's configuration",
    "snapshot": "create, list, restore and delete snapshots of a container",
    "template": "list, build and delete templates",
    "network": "create, list, show and delete managed networks (bridges)",
}


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One add_argument() call, for @command."""
    return flags, kwargs


def command(
    path: str, help: str, *args: tuple[tuple[str, ...], dict[str, Any]], formats: bool = False
) -> Callable[[Handler], Handler]:
    """Register a handler as the command `path` ("destroy", "snapshot list").

    formats=True adds `--format table|json`.
    """

    def register(fn: Handler) -> Handler:
        COMMANDS.append(Command(tuple(path.split()), help, args, fn, formats))
        return fn

    return register


def _named_path(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The command (or group) that `argv` names, if it names a known one."""
    words: list[str] = []
    it = iter(argv)
    for token in it:
        if token == "--socket":
            next(it, None)
        elif token.startswith("-"):
            if words or not token.startswith("--socket="):
                break  # -h, --version, or the command's own options
        else:
            words.append(token)
            if len(words) == 2 or words[0] not in GROUPS:
                break
    known = {c.path for c in COMMANDS}
    for n in (2, 1):
        if tuple(words[:n]) in known or (n == 1 and words[:1] and words[0] in GROUPS):
            return tuple(words[:n])
    return None


def _boolean_optional() -> type[argparse.Action]:
    import argparse

    return argparse.BooleanOptionalAction


def _fast_args(argv: Sequence[str]) -> Any:
    """The parsed arguments of a command line that names a command and
    gives it only positional values (`lxpy start web db`), made without
    argparse; None for anything else (options, help, errors), which
    argparse then parses.

    The result carries the same attributes argparse would set, with every
    option at its default; tests/unit/test_cli.py compares the two for
    every command in the table.
    """
    import types

    words = list(argv)
    socket = None
    if words[:1] == ["--socket"] and len(words) > 1:
        socket, words = words[1], words[2:]
    elif words[:1] and words[0].startswith("--socket="):
        socket, words = words[0].partition("=")[2], words[1:]
    if not words or any(w.startswith("-") for w in words):
        return None
    path = tuple(words[:2]) if words[0] in GROUPS else tuple(words[:1])
    cmd = next((c for c in COMMANDS if c.path == path), None)
    if cmd is None:
        return None
    ns: dict[str, Any] = {"socket": socket, "command": path[0], "run": cmd.run}
    if len(path) == 2:
        ns["subcommand"] = path[1]
    if cmd.formats:
        ns["format"] = "table"
    values = words[len(path) :]
    positionals = [(f[0], kw.get("nargs")) for f, kw in cmd.args if not f[0].startswith("-")]
    for flags, kw in cmd.args:
        if not flags[0].startswith("-"):
            if set(kw) - {"nargs", "metavar", "help"}:
                return None  # a type or choices to check: argparse's job
            continue
        if kw.get("required"):
            return None  # an option the line lacks: argparse's usage error
        long = max(flags, key=len).lstrip("-").replace("-", "_")
        action = kw.get("action")
        if action in ("store_true", "store_false"):
            ns[kw.get("dest", long)] = action == "store_false"
        else:
            ns[kw.get("dest", long)] = kw.get("default")
    for i, (dest, nargs) in enumerate(positionals):
        last = i == len(positionals) - 1
        if nargs is None and values:
            ns[dest], values = values[0], values[1:]
        elif nargs in ("+", "*") and last and (values or nargs == "*"):
            ns[dest], values = values, []
        elif nargs == "?" and last:
            ns[dest], values = (values[0] if values else None), values[1:]
        else:
            return None  # missing values, or a shape argparse handles
    return None if values else types.SimpleNamespace(**ns)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser for the commands in COMMANDS.

    With `argv` naming a known command, only that command is added. Why:
    argparse takes about 0.25 ms per subparser, and the whole table would
    be a third of a short command's run time. Help, errors and unknown
    commands get the full table.
    """
    wanted = _named_path(argv) if argv is not None else None
    parser = new_parser(prog="lxpy", description="Manage system containers through lxpyd.")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="lxpyd's socket (default: $LXPY_SOCKET, else /run/lxpy/lxpy.sock)",
    )
    parser.add_argument("--version", action="version", version=f"lxpy {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for cmd in COMMANDS:
        if wanted is not None and cmd.path[: len(wanted)] != wanted:
            continue
        where = top
        if len(cmd.path) == 2:
            group = cmd.path[0]
            if group not in groups:
                gp = top.add_parser(group, help=GROUPS[group], description=GROUPS[group])
                groups[group] = gp.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True
                )
            where = groups[group]
        p = where.add_parser(cmd.path[-1], help=cmd.help, description=cmd.help)
        add_arguments(p, cmd)
        p.set_defaults(run=cmd.run)
    return parser


def add_arguments(parser: argparse.ArgumentParser, cmd: Command) -> None:
    """Add command `cmd`'s arguments (and `--format`) to `parser`."""
    for flags, kwargs in cmd.args:
        if kwargs.get("action") == BOOLEAN_OPTIONAL:
            kwargs = {**kwargs, "action": _boolean_optional()}
        parser.add_argument(*flags, **kwargs)
    if cmd.formats:
        parser.add_argument(
            "--format",
            choices=("table", "json"),
            default="table",
            help="output format (json: on one line, indented on a terminal)",
        )


# -- output ------------------------------------------------------------------------


def print_json(data: object) -> None:
    """Indented on a terminal; one line (as Incus prints it) into a pipe or
    file, where a script reads it and the pure-Python indenting encoder
    would cost a `list --format json` of 100 containers ~12 ms."""
    if sys.stdout.isatty():
        import json  # only here: its import costs every other command ~6 ms

        print(json.dumps(data, indent=2))
    else:
        print(wire.dumps(data))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns aligned to their widest cell; the last column is not padded."""
    rows = [list(headers), *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)]
        print("  ".join([*cells, r[-1]]).rstrip())


def _yes_no(value: object) -> str:
    return "yes" if value else "no"


# -- argument types ------------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    """argparse type of `--set KEY=VALUE`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        import argparse

        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


NAME = arg("name", metavar="NAME", help="container name")

# -- containers ------------------------------------------------------------------


@command(
    "create",
    "create a container from a template (built first if needed)",
    NAME,
    arg("-t", "--template", required=True, metavar="TEMPLATE", help="template name"),
    arg(
        "--set",
        dest="config",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="config key to set (repeatable)",
    ),
    formats=True,
)
def cmd_create(client: Client, args: argparse.Namespace) -> None:
    ct = client.create_container(args.name, args.template, dict(args.config))
    if args.format == "json":
        print_json(ct)
    else:
        print(f"created {ct.get('name', args.name)} from template {args.template}")


@command("list", "list containers", formats=True)
def cmd_list(client: Client, args: argparse.Namespace) -> None:
    cts = client.containers()
    if args.format == "json":
        print_json(cts)
        return
    print_table(
        ("NAME", "STATE", "ADDRESSES", "TEMPLATE", "SNAPSHOTS", "CREATED"),
        (
            (
                c.get("name", ""),
                c.get("state", ""),
                ",".join(c.get("addresses") or ()) or "-",
                c.get("template", ""),
                str(len(c.get("snapshots") or ())),
                c.get("created_at", ""),
            )
            for c in sorted(cts, key=lambda c: str(c.get("name", "")))
        ),
    )


# Fields of a container in the order `info` shows them; others follow.
_INFO_FIELDS = (
    "name",
    "state",
    "init_pid",
    "started_at",
    "addresses",
    "last_exit",
    "template",
    "created_at",
    "owner",
    "path",
    "snapshots",
)


@command("info", "show a container", NAME, formats=True)
def cmd_info(client: Client, args: argparse.Namespace) -> None:
    ct = client.container(args.name)
    if args.format == "json":
        print_json(ct)
        return
    # Fields the daemon adds beyond docs/api.md are shown when they say something.
    rest = [
        k
        for k in ct
        if k not in _INFO_FIELDS and k not in ("config", "stats") and ct[k] not in (None, "")
    ]
    fields = [k for k in _INFO_FIELDS if k in ct] + rest
    width = max(len(k) for k in fields) + 1 if fields else 0
    for key in fields:
        value = ct[key]
        if key == "last_exit" and isinstance(value, dict):
            text = f"{value.get('reason')}: {value.get('detail')}"
        elif key == "owner" and isinstance(value, dict):
            text = owner_text(value)
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value) or "-"
        elif value is None:
            text = "-"
        else:
            text = format_value(value)
        print(f"{(key + ':').ljust(width)} {text}")
    if ct.get("state") in ("RUNNING", "FROZEN", "STOPPING"):
        from lxpy.cli_stats import info_lines

        print("\n".join(info_lines(ct.get("stats"))))
    config = ct.get("config") or {}
    print("config:" + ("" if config else " -"))
    for key in sorted(config):
        print(f"  {key} = {format_value(config[key])}")


@command(
    "destroy",
    "delete a container and its snapshots",
    NAME,
    arg("-f", "--force", action="store_true", help="stop it first if it runs"),
)
def cmd_destroy(client: Client, args: argparse.Namespace) -> None:
    client.delete_container(args.name, force=args.force)
    print(f"destroyed {args.name}")


TIMEOUT = arg(
    "--timeout",
    type=float,
    metavar="S",
    help="seconds to wait for a clean shutdown before killing (default: 30)",
)


NAMES = arg("names", nargs="+", metavar="NAME", help="container name(s)")


def each(names: list[str], fn: Callable[[str], None]) -> None:
    """Run fn(name) for every name, side by side (one request each).

    Each failure is printed as `error: NAME: ...`; if any failed, raises an
    LxpyError saying how many.
    """
    if len(names) == 1:
        fn(names[0])
        return
    import threading

    failed: list[str] = []

    def one(name: str) -> None:
        try:
            fn(name)
        except LxpyError as e:
            failed.append(name)
            fail(f"{name}: {e.message}", e.hint)

    threads = [threading.Thread(target=one, args=(n,)) for n in dict.fromkeys(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise LxpyError(f"{len(failed)} of {len(threads)} failed: {', '.join(sorted(failed))}")


@command("start", "start containers (returns once their init runs)", NAMES)
def cmd_start(client: Client, args: argparse.Namespace) -> None:
    def start(name: str) -> None:
        ct = client.start_container(name)
        print(f"started {name} (init pid {ct.get('init_pid')})")

    each(args.names, start)


@command(
    "stop",
    "stop containers: ask init to power off, kill after the timeout",
    NAMES,
    TIMEOUT,
    arg("-f", "--force", action="store_true", help="kill it at once"),
)
def cmd_stop(client: Client, args: argparse.Namespace) -> None:
    def stop(name: str) -> None:
        ct = client.stop_container(name, timeout=args.timeout, force=args.force)
        why = ct.get("last_exit") or {}
        print(f"stopped {name}" + (f" ({why.get('detail')})" if why.get("detail") else ""))

    each(args.names, stop)


@command("restart", "stop a container (if it runs) and start it again", NAME, TIMEOUT)
def cmd_restart(client: Client, args: argparse.Namespace) -> None:
    ct = client.restart_container(args.name, timeout=args.timeout)
    print(f"restarted {args.name} (init pid {ct.get('init_pid')})")


@command(
    "stop-all",
    "stop every running container, higher boot.stop_priority first (for host shutdown)",
    TIMEOUT,
)
def cmd_stop_all(client: Client, args: argparse.Namespace) -> int:
    res = client.stop_all(timeout=args.timeout)
    for name in res.get("stopped") or ():
        print(f"stopped {name}")
    errors = res.get("errors") or {}
    for name, msg in errors.items():
        print(f"error: {name}: {msg}", file=sys.stderr)
    return EXIT_ERROR if errors else 0


@command(
    "top",
    "show the running containers' CPU, memory, processes and network, every second",
    arg("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes"),
    arg("--once", action="store_true", help="print one frame and exit"),
)
def cmd_top(client: Client, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0", "", "lxpy top")
    from lxpy.cli_stats import run_top

    return run_top(client, args.interval, args.once)


@command("freeze", "freeze every process of a running container", NAME)
def cmd_freeze(client: Client, args: argparse.Namespace) -> None:
    client.freeze_container(args.name)
    print(f"froze {args.name}")


@command("unfreeze", "thaw a frozen container", NAME)
def cmd_unfreeze(client: Client, args: argparse.Namespace) -> None:
    client.unfreeze_container(args.name)
    print(f"unfroze {args.name}")


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


@command(
    "rename",
    "rename a stopped container",
    arg("old", metavar="OLD", help="current name"),
    arg("new", metavar="NEW", help="new name"),
)
def cmd_rename(client: Client, args: argparse.Namespace) -> None:
    client.rename_container(args.old, args.new)
    print(f"renamed {args.old} to {args.new}")


@command(
    "copy",
    "copy a container (a clone, by snapshot)",
    arg("source", metavar="SRC", help="container to copy"),
    arg("dest", metavar="DST", help="name of the copy"),
    formats=True,
)
def cmd_copy(client: Client, args: argparse.Namespace) -> None:
    ct = client.copy_container(args.source, args.dest)
    if args.format == "json":
        print_json(ct)
    else:
        print(f"copied {args.source} to {ct.get('name', args.dest)}")


# -- config ------------------------------------------------------------------------


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


@command(
    "config set",
    "set one configuration key",
    NAME,
    arg("key", metavar="KEY"),
    arg("value", metavar="VALUE"),
)
def cmd_config_set(client: Client, args: argparse.Namespace) -> None:
    client.update_config(args.name, set_={args.key: args.value})


@command("config unset", "remove one configuration key", NAME, arg("key", metavar="KEY"))
def cmd_config_unset(client: Client, args: argparse.Namespace) -> None:
    client.update_config(args.name, unset=[args.key])


# -- snapshots ---------------------------------------------------------------------


SNAP = arg("snapshot", metavar="SNAP", help="snapshot name")


@command(
    "snapshot create",
    "snapshot a container (named snap0, snap1, ... unless SNAP is given)",
    NAME,
    arg("snapshot", metavar="SNAP", nargs="?", help="snapshot name"),
    formats=True,
)
def cmd_snapshot_create(client: Client, args: argparse.Namespace) -> None:
    snap = client.create_snapshot(args.name, args.snapshot)
    if args.format == "json":
        print_json(snap)
    else:
        print(f"created snapshot {args.name}/{snap.get('name', args.snapshot)}")


@command("snapshot list", "list a container's snapshots", NAME, formats=True)
def cmd_snapshot_list(client: Client, args: argparse.Namespace) -> None:
    snaps = client.snapshots(args.name)
    if args.format == "json":
        print_json(snaps)
        return
    print_table(("NAME", "CREATED"), ((s.get("name", ""), s.get("created_at", "")) for s in snaps))


@command("snapshot restore", "roll a stopped container back to a snapshot", NAME, SNAP)
def cmd_snapshot_restore(client: Client, args: argparse.Namespace) -> None:
    client.restore_snapshot(args.name, args.snapshot)
    print(f"restored {args.name} to snapshot {args.snapshot}")


@command("snapshot delete", "delete a snapshot", NAME, SNAP)
def cmd_snapshot_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_snapshot(args.name, args.snapshot)
    print(f"deleted snapshot {args.name}/{args.snapshot}")


# -- templates ---------------------------------------------------------------------


TEMPLATE = arg("name", metavar="NAME", help="template name")


@command("template list", "list templates and whether they are built", formats=True)
def cmd_template_list(client: Client, args: argparse.Namespace) -> None:
    tpls = client.templates()
    if args.format == "json":
        print_json(tpls)
        return
    print_table(
        ("NAME", "BUILT", "STALE", "DESCRIPTION"),
        (
            (
                t.get("name", ""),
                _yes_no(t.get("built")),
                _yes_no(t.get("stale")) if t.get("built") else "-",
                t.get("description") or "",
            )
            for t in sorted(tpls, key=lambda t: str(t.get("name", "")))
        ),
    )


@command(
    "template build",
    "build a template (nothing to do when it is up to date, unless --force)",
    TEMPLATE,
    arg("-f", "--force", action="store_true", help="rebuild even when up to date"),
    formats=True,
)
def cmd_template_build(client: Client, args: argparse.Namespace) -> int | None:
    started = time.monotonic()
    op = client.build_template(args.name, force=args.force)
    if op.get("status") == "running":
        try:
            op = follow_operation(client, op)
        except KeyboardInterrupt:
            return _cancel(client, op, f"the build of template {args.name}")
    status = op.get("status")
    if status == "failure":
        err = op.get("error")
        if isinstance(err, dict):
            raise from_json(err)
        raise LxpyError(f"building template {args.name} failed")
    if status == "cancelled":
        raise Cancelled(f"the build of template {args.name} was cancelled")
    if args.format == "json":
        print_json(op)
    elif op.get("stage") == "cached":
        print(f"template {args.name} is up to date")
    else:
        print(f"built template {args.name} in {time.monotonic() - started:.1f} s")
    return None


@command("template delete", "delete a built template", TEMPLATE)
def cmd_template_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_template(args.name)
    print(f"deleted template {args.name}")


# -- networks ----------------------------------------------------------------------


NETWORK = arg("name", metavar="NAME", help="network name (also its bridge's name)")


@command(
    "network create",
    "create a managed network: a bridge with DHCP, DNS (NAME.lxpy) and NAT",
    NETWORK,
    arg("--subnet", metavar="CIDR", help="IPv4 subnet (default: a free 10.x.y.0/24)"),
    arg(
        "--nat",
        action=BOOLEAN_OPTIONAL,
        default=True,
        help="masquerade the containers' traffic out of the host (default: on)",
    ),
    formats=True,
)
def cmd_network_create(client: Client, args: argparse.Namespace) -> None:
    net = client.create_network(args.name, args.subnet, args.nat)
    if args.format == "json":
        print_json(net)
    else:
        print(f"created network {args.name}: {net.get('subnet')} via {net.get('gateway')}")


@command("network list", "list managed networks", formats=True)
def cmd_network_list(client: Client, args: argparse.Namespace) -> None:
    nets = client.networks()
    if args.format == "json":
        print_json(nets)
        return
    print_table(
        ("NAME", "SUBNET", "GATEWAY", "NAT", "STATUS", "USED BY"),
        (
            (
                n.get("name", ""),
                n.get("subnet", ""),
                n.get("gateway", ""),
                _yes_no(n.get("nat")),
                n.get("status", ""),
                ", ".join(n.get("used_by") or ()) or "-",
            )
            for n in nets
        ),
    )


@command("network info", "show a managed network and its leases", NETWORK, formats=True)
def cmd_network_info(client: Client, args: argparse.Namespace) -> None:
    net = client.network(args.name)
    if args.format == "json":
        print_json(net)
        return
    for key in ("name", "subnet", "gateway", "nat", "domain", "bridge", "status", "error"):
        value = net.get(key)
        if key == "error" and not value:
            continue
        text = _yes_no(value) if isinstance(value, bool) else str(value)
        print(f"{key + ':':9} {text}")
    print(f"dnsmasq:  pid {net.get('dnsmasq_pid') or '-'}, restarts {net.get('dnsmasq_restarts')}")
    print("used by:  " + (", ".join(net.get("used_by") or ()) or "-"))
    leases = net.get("leases") or []
    print("leases:" + ("" if leases else "   -"))
    for le in leases:
        print(f"  {le.get('ipv4')}  {le.get('mac')}  {le.get('hostname')}")


@command("network delete", "delete a managed network no container uses", NETWORK)
def cmd_network_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_network(args.name)
    print(f"deleted network {args.name}")


# -- operations --------------------------------------------------------------------


class Progress:
    """Build output on stderr: log lines as they come, and a progress line.

    On a terminal the progress line is redrawn in place under the log; in
    a pipe it is printed once per stage, so logs stay readable.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.line = ""
        self.stage: object = None

    def _clear(self) -> None:
        if self.tty and self.line:
            sys.stderr.write("\r\x1b[K")

    def log(self, text: str) -> None:
        self._clear()
        sys.stderr.write(text.rstrip("\n") + "\n")
        if self.tty and self.line:
            sys.stderr.write(self.line)
        sys.stderr.flush()

    def update(self, progress: object, stage: object) -> None:
        try:
            pct = f"{float(progress) * 100:3.0f}%"  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pct = "  ?%"
        text = f"[{pct}] {stage or ''}".rstrip()
        if self.tty:
            self._clear()
            self.line = text
            sys.stderr.write(text)
        elif stage != self.stage:
            sys.stderr.write(text + "\n")
        self.stage = stage
        sys.stderr.flush()

    def done(self) -> None:
        self._clear()
        self.line = ""
        sys.stderr.flush()


def follow_operation(client: Client, op: dict[str, Any]) -> dict[str, Any]:
    """Show a running operation's log and progress; return it once it has ended."""
    op_id = str(op["id"])
    progress = Progress()
    final: dict[str, Any] | None = None
    try:
        for msg in client.operation_stream(op_id):
            if "log" in msg:
                progress.log(str(msg["log"]))
            elif "operation" in msg:
                # The last line; the daemon ends the stream right after it,
                # so read on to the end rather than hang up mid-response.
                final = msg["operation"]
            elif "progress" in msg or "stage" in msg:
                progress.update(msg.get("progress"), msg.get("stage"))
    finally:
        progress.done()
    if final is None:
        # The stream ended without its last line (daemon restart, proxy):
        # ask for the outcome instead.
        final = client.wait_operation(op_id)
    return final


def _cancel(client: Client, op: dict[str, Any], what: str) -> int:
    # Ctrl-C: the work runs in the daemon, so stop it there too; a fresh
    # client bounds the wait in case the daemon is itself stuck.
    try:
        Client(client.socket_path, timeout=15).cancel_operation(str(op["id"]))
    except LxpyError as e:
        return fail(f"interrupted; could not cancel {what}: {e.message}", e.hint, EXIT_INTERRUPTED)
    return fail(f"interrupted; cancelled {what}", status=EXIT_INTERRUPTED)


# -- the terminal UI --------------------------------------------------------------


@command("tui", "open the terminal UI (lxpy-tui) on this daemon")
def cmd_tui(client: Client, args: argparse.Namespace) -> int:
    # exec rather than import: the CLI stays free of Textual, and the TUI
    # gets the terminal and the process to itself.
    here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "lxpy-tui")
    program = here if os.access(here, os.X_OK) else "lxpy-tui"
    try:
        os.execvp(program, [program, "--socket", client.socket_path])
    except OSError as e:
        return fail(
            f"cannot run {program}: {e.strerror or e}",
            "install lxpy with its terminal UI (`pip install lxpy`), which provides lxpy-tui",
        )


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `lxpy` command; return its exit status."""
    try:
        words = sys.argv[1:] if argv is None else argv
        args = _fast_args(words)
        if args is None:
            args = build_parser(words).parse_args(words)
        client = Client(args.socket)
        status = args.run(client, args) or 0
        # Flush here so a closed pipe is seen below, not at interpreter exit.
        sys.stdout.flush()
        return int(status)
    except UsageError as e:
        sys.stderr.write(e.usage)
        return fail(e.message, f"see `{e.prog} --help`", EXIT_USAGE)
    except LxpyError as e:
        return fail(e.message, e.hint)
    except KeyboardInterrupt:
        return fail("interrupted", status=EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`lxpy list | head`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except SystemExit as e:
        # --help and --version end through parser.exit().
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
