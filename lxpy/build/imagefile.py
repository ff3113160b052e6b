"""An image's files: its metadata tarball and its rootfs tarball.

The rootfs tarball comes from a server lxpy does not control, and is
unpacked by root: before tar runs, every member is checked, and one that
would write outside the target is refused with the whole image:

* an absolute name or a `..` component (in a name or a hard link's target);
* a member whose path goes through a symlink an earlier member made
  (`etc -> /etc`, then `etc/passwd`: written through the link, on the host);
* a device node outside /dev.

/dev is left out altogether (lxpy builds each container's /dev at start),
as Incus does when it unpacks an image. Symlinks themselves may point
anywhere: inside the container they resolve in its root, and host-side
code reads a rootfs through lxpy.kernel.inroot only.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from lxpy.build.proc import run_logged
from lxpy.build.report import Reporter
from lxpy.build.tarball import EXTRACT_FLAGS
from lxpy.errors import InvalidArgument

# metadata.yaml is a few hundred bytes; the cap keeps a hostile one small.
MAX_METADATA = 1 << 20


def _clean(name: str, what: str, archive: str) -> str:
    # "./etc/passwd" and "etc/passwd" are the same member.
    path = name
    while path.startswith("./"):
        path = path[2:]
    if path in ("", "."):
        return ""
    if path.startswith("/"):
        raise InvalidArgument(f"{archive}: {what} {name!r} is an absolute path")
    if ".." in PurePosixPath(path).parts:
        raise InvalidArgument(f"{archive}: {what} {name!r} leaves the rootfs ('..')")
    return path.rstrip("/")


def check_rootfs_tarball(archive: Path) -> int:
    """Refuse a rootfs tarball with a member that would land outside the
    target (see the module's docstring). Returns the number of members.

    Raises:
        InvalidArgument: naming the archive and the member.
    """
    label = archive.name
    links: set[str] = set()
    count = 0
    try:
        with tarfile.open(archive, "r|*") as tar:
            for m in tar:
                count += 1
                path = _clean(m.name, "entry", label)
                if not path:
                    continue
                parents = PurePosixPath(path).parents
                for parent in parents:
                    if str(parent) in links:
                        raise InvalidArgument(
                            f"{label}: entry {m.name!r} goes through the symlink {parent}/, "
                            "which may lead out of the rootfs"
                        )
                in_dev = path == "dev" or path.startswith("dev/")
                if (m.ischr() or m.isblk()) and not in_dev:
                    raise InvalidArgument(
                        f"{label}: entry {m.name!r} is a device node outside /dev"
                    )
                if m.islnk():
                    _clean(m.linkname, f"hard link {m.name!r} to", label)
                if m.issym():
                    # Kept even if a later entry reuses the path: tar may
                    # keep the link there.
                    links.add(path)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArgument(f"{label}: not a readable tarball ({e})") from e
    return count


def read_metadata(archive: Path) -> dict[str, str]:
    """The top-level scalar fields of metadata.yaml in an image's metadata
    tarball (architecture, creation_date, ...), and `properties.*` ones.

    Raises:
        InvalidArgument: no metadata.yaml, or no architecture in it.
    """
    label = archive.name
    text = None
    try:
        with tarfile.open(archive, "r|*") as tar:
            for m in tar:
                if _clean(m.name, "entry", label) == "metadata.yaml" and m.isfile():
                    if m.size > MAX_METADATA:
                        raise InvalidArgument(f"{label}: metadata.yaml is too large")
                    f = tar.extractfile(m)
                    text = f.read().decode("utf-8", "replace") if f else None
                    break
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArgument(f"{label}: not a readable tarball ({e})") from e
    if text is None:
        raise InvalidArgument(f"{label}: has no metadata.yaml")
    fields = parse_metadata(text)
    if not fields.get("architecture"):
        raise InvalidArgument(f"{label}: metadata.yaml names no architecture")
    return fields


def parse_metadata(text: str) -> dict[str, str]:
    """The scalars of a metadata.yaml: `key: value` at the top, and under
    `properties:` as `properties.key`. The rest (templates) is not used."""
    out: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        value = value.strip().strip("'\"")
        if indent == 0:
            section = key if not value else ""
            if value:
                out[key] = value
        elif section == "properties" and value:
            out[f"properties.{key}"] = value
    return out


async def unpack_rootfs(archive: Path, target: Path, report: Reporter) -> None:
    """Unpack a checked rootfs tarball into the empty directory `target`,
    keeping owners, modes and attributes, leaving /dev out.

    Raises:
        LxpyError: tar failed.
    """
    await run_logged(
        [
            "tar",
            "-C",
            str(target),
            *EXTRACT_FLAGS,
            "--anchored",
            "--wildcards",
            "--exclude=dev/*",
            "--exclude=./dev/*",
            "-xf",
            str(archive),
        ],
        report.log,
    )
