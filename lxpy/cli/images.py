"""`lxpy remote ...`, `lxpy image ...` and `lxpy publish`."""

from __future__ import annotations

from lxpy.cli.operations import Progress, cancel, follow_operation
from lxpy.cli.output import print_json, print_table
from lxpy.cli.parse import arg, command
from lxpy.errors import Cancelled, LxpyError, from_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from lxpy.api.client import Client


IMAGE = arg("image", metavar="IMAGE", help="image alias or fingerprint (prefix)")


def size_text(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


# -- remotes -------------------------------------------------------------------


@command("remote list", "list image servers", formats=True)
def cmd_remote_list(client: Client, args: argparse.Namespace) -> None:
    remotes = client.remotes()
    if args.format == "json":
        print_json(remotes)
        return
    print_table(
        ("NAME", "URL", "PROTOCOL"),
        ((r.get("name", ""), r.get("url", ""), r.get("protocol", "")) for r in remotes),
    )


@command(
    "remote add",
    "add an image server (https, or http for a local mirror)",
    arg("name", metavar="NAME", help="remote name, used as NAME: in image names"),
    arg("url", metavar="URL", help="the top of its tree (where streams/v1/ is)"),
    arg("--protocol", default="simplestreams", choices=("simplestreams",), help="its protocol"),
)
def cmd_remote_add(client: Client, args: argparse.Namespace) -> None:
    r = client.add_remote(args.name, args.url, args.protocol)
    print(f"added remote {r.get('name', args.name)} ({r.get('url', args.url)})")


@command(
    "remote remove",
    "remove an image server (images cached from it stay)",
    arg("name", metavar="REMOTE", help="remote name"),
)
def cmd_remote_remove(client: Client, args: argparse.Namespace) -> None:
    client.remove_remote(args.name)
    print(f"removed remote {args.name}")


# -- images ----------------------------------------------------------------------


@command(
    "image list",
    "list cached images, or with REMOTE: the images an image server offers",
    arg(
        "filter",
        nargs="*",
        metavar="[REMOTE:] [FILTER]",
        help="REMOTE: lists that server's images; words filter them: text in an alias, "
        "or KEY=VALUE (distribution, release, architecture, variant)",
    ),
    arg("--refresh", action="store_true", help="read the server's index again now"),
    formats=True,
)
def cmd_image_list(client: Client, args: argparse.Namespace) -> None:
    words = list(args.filter)
    if words and words[0].endswith(":"):
        remote = words.pop(0)[:-1]
        found = client.remote_images(remote, " ".join(words), refresh=args.refresh)
        if args.format == "json":
            print_json(found)
            return
        print_table(
            ("ALIAS", "DISTRIBUTION", "RELEASE", "ARCH", "VARIANT", "DATE", "SIZE", "FINGERPRINT"),
            (
                (
                    _first_alias(i),
                    i.get("distribution", ""),
                    i.get("release", ""),
                    i.get("architecture", ""),
                    i.get("variant", ""),
                    i.get("version", ""),
                    size_text(i.get("size")),
                    str(i.get("fingerprint", ""))[:12],
                )
                for i in found
            ),
        )
        return
    images = [i for i in client.images() if _local_match(i, words)]
    if args.format == "json":
        print_json(images)
        return
    print_table(
        ("ALIASES", "FINGERPRINT", "DISTRIBUTION", "RELEASE", "ARCH", "SOURCE", "SIZE", "CREATED"),
        (
            (
                ",".join(i.get("aliases") or ()) or "-",
                str(i.get("fingerprint", ""))[:12],
                i.get("distribution", ""),
                i.get("release", ""),
                i.get("architecture", ""),
                _source(i),
                size_text(i.get("size")),
                i.get("created_at", ""),
            )
            for i in images
        ),
    )


def _first_alias(img: dict[str, Any]) -> str:
    aliases = [str(a) for a in img.get("aliases") or ()]
    # The shortest names it best (alpine/3.20 rather than alpine/3.20/default).
    return min(aliases, key=len) if aliases else "-"


def _source(img: dict[str, Any]) -> str:
    src = img.get("source")
    if isinstance(src, dict):
        return f"{src.get('remote')}:{src.get('alias')}"
    pub = img.get("published_from")
    if isinstance(pub, dict):
        snap = pub.get("snapshot")
        return f"publish {pub.get('container')}" + (f"/{snap}" if snap else "")
    return "-"


def _local_match(img: dict[str, Any], words: list[str]) -> bool:
    for w in words:
        key, sep, value = w.partition("=")
        if sep:
            if str(img.get(key, "")).lower() != value.lower():
                return False
        elif not any(w in str(a) for a in img.get("aliases") or ()) and not str(
            img.get("fingerprint", "")
        ).startswith(w):
            return False
    return True


def pull(client: Client, image: str) -> dict[str, Any]:
    """Download REMOTE:ALIAS into the cache, showing a progress bar; the
    operation once done. Ctrl-C cancels the download (a later pull resumes
    it).

    Raises:
        LxpyError: the pull failed. Cancelled: someone cancelled it.
    """
    op = client.pull_image(image)
    if op.get("status") == "running":
        try:
            op = follow_operation(client, op, Progress(show_log=False, bar=True))
        except KeyboardInterrupt:
            # The .part stays in the daemon: the next pull resumes it.
            raise SystemExit(cancel(client, op, f"the download of {image}")) from None
    status = op.get("status")
    if status == "failure":
        err = op.get("error")
        raise (from_json(err) if isinstance(err, dict) else None) or LxpyError(
            f"downloading {image} failed"
        )
    if status == "cancelled":
        raise Cancelled(f"the download of {image} was cancelled")
    return op


@command(
    "image pull",
    "download an image from an image server into the cache",
    arg("image", metavar="REMOTE:ALIAS", help="e.g. images:alpine/3.20"),
    formats=True,
)
def cmd_image_pull(client: Client, args: argparse.Namespace) -> None:
    op = pull(client, args.image)
    if args.format == "json":
        print_json(op)
    elif op.get("stage") == "cached":
        print(f"image {args.image} is cached already")
    else:
        print(f"downloaded {args.image}")


@command("image show", "show a cached image", IMAGE)
def cmd_image_show(client: Client, args: argparse.Namespace) -> None:
    print_json(client.image(args.image))


@command(
    "image delete",
    "delete cached images (containers made from them keep their rootfs)",
    arg("image", nargs="+", metavar="IMAGE", help="image alias or fingerprint (prefix)"),
)
def cmd_image_delete(client: Client, args: argparse.Namespace) -> None:
    for ref in args.image:
        client.delete_image(ref)
        print(f"deleted image {ref}")


@command(
    "image alias",
    "add an alias to a cached image (or remove one with --remove)",
    IMAGE,
    arg("alias", metavar="ALIAS", help="the alias"),
    arg("--remove", action="store_true", help="remove the alias instead"),
)
def cmd_image_alias(client: Client, args: argparse.Namespace) -> None:
    if args.remove:
        client.update_image_aliases(args.image, remove=[args.alias])
        print(f"removed alias {args.alias}")
    else:
        img = client.update_image_aliases(args.image, add=[args.alias])
        print(f"image {str(img.get('fingerprint', ''))[:12]} is also {args.alias}")


@command(
    "publish",
    "turn a stopped container or a snapshot into a local image",
    arg("source", metavar="NAME[/SNAPSHOT]", help="container, or container/snapshot"),
    arg("--alias", action="append", default=[], metavar="ALIAS", help="alias (repeatable)"),
    arg("--description", default="", help="the image's description"),
    formats=True,
)
def cmd_publish(client: Client, args: argparse.Namespace) -> None:
    name, _, snap = args.source.partition("/")
    img = client.publish(name, snap or None, args.alias, args.description)
    if args.format == "json":
        print_json(img)
        return
    aliases = ", ".join(img.get("aliases") or ()) or "no alias"
    print(f"published {args.source} as image {str(img.get('fingerprint', ''))[:12]} ({aliases})")
