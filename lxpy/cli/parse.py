"""The `lxpy` command's machinery: the command table, parsing, exits.

Commands are rows of one table (COMMANDS, filled by the @command
decorator), so adding one is a function and a decorator in the module of
its group. Every failure leaves through fail(): `error: ...` and `hint:
...` on stderr, status 1 (2 for usage errors, 130 for Ctrl-C).
"""

from __future__ import annotations

import sys

from lxpy import __version__
from lxpy.errors import LxpyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

    from lxpy.api.client import Client

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
    """A bad command line, found by argparse; the hint defaults to `see
    `PROG --help``."""

    def __init__(self, message: str, usage: str, prog: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.prog = prog
        self.hint = hint or f"see `{prog} --help`"


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
            # Text after the options in --help, made only when help is
            # shown (build_parser); see Command.epilog.
            lazy_epilog: Callable[[], str] | None = None

            # argparse prints and exits on its own; route its errors through
            # fail() so every error of the CLI looks the same.
            def error(self, message: str) -> Any:
                raise UsageError(message, self.format_usage(), self.prog)

            # argparse says "invalid choice: 'strat' (choose from ...)" and
            # lists every command; say which one was meant instead.
            def _check_value(self, action: argparse.Action, value: Any) -> None:
                if action.choices is None or value in action.choices:
                    return
                raise bad_choice(self, action, value)

            def format_help(self) -> str:
                if self.lazy_epilog is not None:
                    self.epilog = self.lazy_epilog()
                return super().format_help()

        _PARSER_CLASS = _Parser
    return _PARSER_CLASS(**kwargs)


def bad_choice(parser: argparse.ArgumentParser, action: argparse.Action, value: str) -> UsageError:
    """The usage error for `value`, which is not one of `action`'s choices:
    an unknown command (or subcommand) with the nearest ones as the hint."""
    from lxpy.model.suggest import did_you_mean, nearest, phrase

    choices = [str(c) for c in action.choices or ()]
    usage = parser.format_usage()
    if action.dest not in ("command", "subcommand"):
        what = "/".join(action.option_strings) or str(action.metavar or action.dest)
        message = f"{what}: invalid choice {value!r} (choose from {', '.join(choices)})"
        return UsageError(message, usage, parser.prog, did_you_mean(value, choices))
    # The parser's prog is `lxpy` or `lxpy snapshot`: the command so far.
    words = parser.prog.split()[1:]
    near = nearest(value, choices)
    if near:
        hint = phrase([" ".join([*words, c]) for c in near])
    elif words:
        hint = f"`{parser.prog}` has: {', '.join(choices)}"
    else:
        hint = f"`{parser.prog} --help` lists the commands"
    return UsageError(f"unknown command {' '.join([*words, value])!r}", usage, parser.prog, hint)


# -- the command table ---------------------------------------------------------


class Command:
    """One row of the table: `path` is ("create",) or ("snapshot", "create")."""

    __slots__ = ("path", "help", "args", "run", "formats", "epilog")

    def __init__(
        self,
        path: tuple[str, ...],
        help: str,
        args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...],
        run: Handler,
        formats: bool,
        epilog: Callable[[], str] | None = None,
    ) -> None:
        self.path = path
        self.help = help
        self.args = args
        self.run = run
        self.formats = formats
        # What --help shows after the options, made when it is shown.
        self.epilog = epilog


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
    "device": "add, remove, list and show a container's devices (host directories, ...)",
    "volume": "create, list and delete custom volumes (data that outlives a container)",
    "template": "list, build and delete templates",
    "image": "list, pull, show, alias and delete images (the local cache and image servers)",
    "remote": "list, add and remove image servers",
    "network": "create, list, show and delete managed networks (bridges)",
}


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One add_argument() call, for @command."""
    return flags, kwargs


def command(
    path: str,
    help: str,
    *args: tuple[tuple[str, ...], dict[str, Any]],
    formats: bool = False,
    epilog: Callable[[], str] | None = None,
) -> Callable[[Handler], Handler]:
    """Register a handler as the command `path` ("destroy", "snapshot list").

    formats=True adds `--format table|json`; `epilog` makes the text that
    --help shows after the options (as it is laid out).
    """

    def register(fn: Handler) -> Handler:
        COMMANDS.append(Command(tuple(path.split()), help, args, fn, formats, epilog))
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
        kw: dict[str, Any] = {}
        if cmd.epilog is not None:
            import argparse

            kw["formatter_class"] = argparse.RawDescriptionHelpFormatter
        p = where.add_parser(cmd.path[-1], help=cmd.help, description=cmd.help, **kw)
        p.lazy_epilog = cmd.epilog  # type: ignore[attr-defined]
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


# -- argument types and shared arguments --------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    """argparse type of `--set KEY=VALUE`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        import argparse

        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


NAME = arg("name", metavar="NAME", help="container name")

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
