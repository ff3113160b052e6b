"""`lxpy snapshot create`, `list`, `restore` and `delete`."""

from __future__ import annotations

from lxpy.cli.output import print_json, print_table
from lxpy.cli.parse import NAME, TIMEOUT, arg, command, each

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


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


@command(
    "snapshot restore",
    "roll a container back to a snapshot (a running one is stopped and started again)",
    NAME,
    SNAP,
    TIMEOUT,
)
def cmd_snapshot_restore(client: Client, args: argparse.Namespace) -> None:
    ct = client.restore_snapshot(args.name, args.snapshot, timeout=args.timeout)
    again = " and started it again" if ct.get("state") == "RUNNING" else ""
    print(f"restored {args.name} to snapshot {args.snapshot}{again}")


@command(
    "snapshot delete",
    "delete snapshots of a container",
    NAME,
    arg("snapshots", nargs="+", metavar="SNAP", help="snapshot name(s)"),
)
def cmd_snapshot_delete(client: Client, args: argparse.Namespace) -> None:
    def delete(snap: str) -> None:
        client.delete_snapshot(args.name, snap)
        print(f"deleted snapshot {args.name}/{snap}")

    each(args.snapshots, delete)
