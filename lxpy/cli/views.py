"""`lxpy top` and `lxpy tui`: views of every container."""

from __future__ import annotations

import os
import sys

from lxpy.cli.parse import UsageError, arg, command, fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


@command(
    "top",
    "show the running containers' CPU, memory, processes and network, every second",
    arg("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes"),
    arg("--once", action="store_true", help="print one frame and exit"),
)
def cmd_top(client: Client, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0", "", "lxpy top")
    from lxpy.cli.stats import run_top

    return run_top(client, args.interval, args.once)


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
