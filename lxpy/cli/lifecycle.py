"""`lxpy start`, `stop`, `restart`, `stop-all`, `freeze` and `unfreeze`."""

from __future__ import annotations

import sys

from lxpy.cli.parse import EXIT_ERROR, NAMES, TIMEOUT, UsageError, arg, command, each

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from lxpy.api.client import Client

WAIT = arg(
    "--wait",
    action="store_true",
    help="return once it is ready: booted (systemd: is-system-running says running or "
    "degraded) and, on a network, holding its address",
)


def _waited(args: argparse.Namespace, seconds: float | None, flag: str) -> float | None:
    # --timeout / --wait-timeout: how long --wait waits (None: the daemon's 120 s).
    if seconds is not None and (not args.wait or seconds < 0):
        why = "needs --wait" if not args.wait else "must be 0 or more"
        raise UsageError(f"{flag} {why}", "", f"lxpy {args.command}")
    return seconds


def _ready(ct: dict[str, Any], wait: bool) -> str:
    # ", ready 10.87.0.5" after a wait, with the addresses it holds.
    return ", ready" + "".join(f" {a}" for a in ct.get("addresses") or []) if wait else ""


@command(
    "start",
    "start containers (returns once their init runs, or with --wait once they are ready; "
    "a running one is left as it is)",
    NAMES,
    WAIT,
    arg("--timeout", type=float, metavar="S", help="with --wait: give up after S s (default 120)"),
)
def cmd_start(client: Client, args: argparse.Namespace) -> None:
    seconds = _waited(args, args.timeout, "--timeout")

    def start(name: str) -> None:
        ct = client.start_container(name, wait=args.wait, wait_timeout=seconds)
        pid = ct.get("init_pid")
        if ct.get("started") is False:
            # As `systemctl start`: nothing to do is not an error.
            print(f"{name} is already running (init pid {pid}){_ready(ct, args.wait)}")
        else:
            print(f"started {name} (init pid {pid}){_ready(ct, args.wait)}")

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
        # Only what the plain "stopped" does not say: a kill, or an end of
        # its own before lxpy's stop reached it.
        detail = str((ct.get("last_exit") or {}).get("detail") or "")
        detail = detail.removeprefix("stopped by lxpy").strip(" ()")
        print(f"stopped {name}" + (f" ({detail})" if detail else ""))

    each(args.names, stop)


@command(
    "restart",
    "stop containers (those that run) and start them again; a config their start "
    "would refuse is found before they stop",
    NAMES,
    TIMEOUT,
    WAIT,
    arg("--wait-timeout", type=float, metavar="S", help="give up --wait after S s (default 120)"),
)
def cmd_restart(client: Client, args: argparse.Namespace) -> None:
    seconds = _waited(args, args.wait_timeout, "--wait-timeout")

    def restart(name: str) -> None:
        ct = client.restart_container(
            name, timeout=args.timeout, wait=args.wait, wait_timeout=seconds
        )
        print(f"restarted {name} (init pid {ct.get('init_pid')}){_ready(ct, args.wait)}")

    each(args.names, restart)


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


@command("freeze", "freeze every process of running containers", NAMES)
def cmd_freeze(client: Client, args: argparse.Namespace) -> None:
    def freeze(name: str) -> None:
        client.freeze_container(name)
        print(f"froze {name}")

    each(args.names, freeze)


@command("unfreeze", "thaw frozen containers", NAMES)
def cmd_unfreeze(client: Client, args: argparse.Namespace) -> None:
    def unfreeze(name: str) -> None:
        client.unfreeze_container(name)
        print(f"unfroze {name}")

    each(args.names, unfreeze)
