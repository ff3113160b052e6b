"""`lxpy create`, `list`, `info`, `destroy`, `rename` and `copy`."""

from __future__ import annotations

from lxpy.api.text import format_value, owner_text, template_text
from lxpy.cli.images import pull
from lxpy.cli.output import print_json, print_table
from lxpy.cli.parse import NAME, NAMES, UsageError, arg, command, each, key_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


@command(
    "create",
    "create a container from a template (built first if needed) or an image",
    NAME,
    arg("-t", "--template", metavar="TEMPLATE", help="template name"),
    arg(
        "-i",
        "--image",
        metavar="IMAGE",
        help="REMOTE:ALIAS (e.g. images:alpine/3.20, downloaded first if not cached), "
        "or a cached image's alias or fingerprint",
    ),
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
    if (args.template is None) == (args.image is None):
        raise UsageError(
            "give one of --template and --image",
            "usage: lxpy create NAME (-t TEMPLATE | -i IMAGE) [--set KEY=VALUE]...\n",
            "lxpy create",
            hint="e.g. `lxpy create web -t debian-bookworm` or "
            "`lxpy create web --image images:alpine/3.20`",
        )
    if args.image is not None and ":" in args.image:
        # Downloaded here, with a progress bar, rather than inside the create.
        pull(client, args.image)
    ct = client.create_container(args.name, args.template, dict(args.config), image=args.image)
    what = f"template {args.template}" if args.image is None else f"image {args.image}"
    if args.format == "json":
        print_json(ct)
    else:
        print(f"created {ct.get('name', args.name)} from {what}")


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
                template_text(c.get("template")),
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
        if k not in _INFO_FIELDS
        and k not in ("config", "stats", "devices")
        and ct[k] not in (None, "")
    ]
    fields = [k for k in _INFO_FIELDS if k in ct] + rest
    width = max(len(k) for k in fields) + 1 if fields else 0
    for key in fields:
        value = ct[key]
        if key == "last_exit" and isinstance(value, dict):
            text = f"{value.get('reason')}: {value.get('detail')}"
        elif key == "owner" and isinstance(value, dict):
            text = owner_text(value)
        elif key == "template" and str(value).startswith("@"):
            # Made from an image: the fingerprint, as `lxpy image list` shows it.
            text = f"image {str(value)[1:]}"
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value) or "-"
        elif value is None:
            text = "-"
        else:
            text = format_value(value)
        print(f"{(key + ':').ljust(width)} {text}")
    if ct.get("state") in ("RUNNING", "FROZEN", "STOPPING"):
        from lxpy.cli.stats import info_lines

        print("\n".join(info_lines(ct.get("stats"))))
    config = ct.get("config") or {}
    print("config:" + ("" if config else " -"))
    for key in sorted(config):
        print(f"  {key} = {format_value(config[key])}")
    devices = ct.get("devices") or {}
    print("devices:" + ("" if devices else " -"))
    for dev in sorted(devices):
        opts = dict(devices[dev])
        kind = opts.pop("type", "?")
        print(f"  {dev}: {kind} " + " ".join(f"{k}={v}" for k, v in sorted(opts.items())))


@command(
    "destroy",
    "delete containers and their snapshots",
    NAMES,
    arg("-f", "--force", action="store_true", help="stop those that run first"),
)
def cmd_destroy(client: Client, args: argparse.Namespace) -> None:
    def destroy(name: str) -> None:
        client.delete_container(name, force=args.force)
        print(f"destroyed {name}")

    each(args.names, destroy)


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
    "copy a container with its snapshots, as a new machine (own machine-id and MAC)",
    arg("source", metavar="SRC", help="container to copy"),
    arg("dest", metavar="DST", help="name of the copy"),
    arg("--instance-only", action="store_true", help="copy the rootfs alone, not the snapshots"),
    formats=True,
)
def cmd_copy(client: Client, args: argparse.Namespace) -> None:
    ct = client.copy_container(args.source, args.dest, args.instance_only)
    if args.format == "json":
        print_json(ct)
        return
    print(f"copied {args.source} to {ct.get('name', args.dest)}")
    for key in ct.get("dropped") or ():
        print(f"not copied: {key} (it stays {args.source}'s; set another on the copy)")
