"""The `lxpy` command: parse the command line, call lxpyd, print the answer.

A thin client: every decision is the daemon's (docs/api.md). The table of
commands and the parsing are in lxpy.cli.parse; each group of commands
is a module of its own (containers, lifecycle, attach, config, snapshots, backup,
devices, templates, images, networks, views, completion), imported here so that its
@command rows are in the table; `lxpy __complete`, which the completion
scripts run at each TAB, goes to lxpy.cli.completion. Every failure
leaves through fail(): `error: ...` and `hint: ...` on stderr, status 1
(2 for usage errors, 130 for Ctrl-C), never a traceback for an LxpyError.

Imports are kept to the standard library's cheap modules and lxpy.api: the
CLI starts, asks and prints within a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sys

from lxpy import __version__
from lxpy.api.client import Client

# The command groups, in the order `lxpy --help` lists them; importing each
# adds its commands to the table.
# isort: off
from lxpy.cli import containers, lifecycle, attach, config  # noqa: F401
from lxpy.cli import snapshots, backup, devices, templates, images, networks, views  # noqa: F401
from lxpy.cli import completion

# isort: on
from lxpy.cli.parse import (
    BOOLEAN_OPTIONAL,
    COMMANDS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    GROUPS,
    REMAINDER,
    Command,
    UsageError,
    _fast_args,
    add_arguments,
    build_parser,
    fail,
)
from lxpy.errors import LxpyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BOOLEAN_OPTIONAL",
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "GROUPS",
    "REMAINDER",
    "Command",
    "UsageError",
    "__version__",
    "_fast_args",
    "add_arguments",
    "build_parser",
    "fail",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `lxpy` command; return its exit status."""
    try:
        words = sys.argv[1:] if argv is None else argv
        if words[:1] == ["__complete"]:
            return completion.run_hidden(words[1:])
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
        return fail(e.message, e.hint, EXIT_USAGE)
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
