"""Images: image servers (remotes), the simplestreams format, image names.

Pure data. An image server speaking simplestreams (images.linuxcontainers.org
and its mirrors) publishes:

    streams/v1/index.json   {"format": "index:1.0", "index": {ID: {
                              "datatype": "image-downloads",
                              "path": "streams/v1/images.json", ...}}}
    streams/v1/images.json  {"format": "products:1.0", "products": {
                              "alpine:3.20:amd64:default": {
                                "aliases": "alpine/3.20/default,alpine/3.20",
                                "arch": "amd64", "os": "Alpine",
                                "release": "3.20", "variant": "default",
                                "versions": {"20240801_13:00": {"items": {
                                  "lxd.tar.xz": {"ftype": "lxd.tar.xz",
                                    "path": ..., "sha256": ..., "size": ...,
                                    "combined_rootxz_sha256": ...,
                                    "combined_squashfs_sha256": ...},
                                  "root.tar.xz": {"ftype": "root.tar.xz", ...},
                                  "rootfs.squashfs": {"ftype": "squashfs", ...}
                                }}}}}}

An image is a metadata tarball (lxd.tar.xz: metadata.yaml, templates/) and
a rootfs (root.tar.xz or squashfs). Its fingerprint is the sha256 of the
two files one after the other: `combined_rootxz_sha256` or
`combined_squashfs_sha256` (older trees: `combined_sha256`, the tar.xz
pair). Aliases are the product's, plus each with the architecture
appended (`alpine/3.20/amd64`), as Incus names them.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lxpy.errors import InvalidArgument, NotFound, Unsupported
from lxpy.model.suggest import not_found_hint

PROTOCOLS = ("simplestreams",)
DEFAULT_REMOTES: dict[str, str] = {"images": "https://images.linuxcontainers.org"}
INDEX_PATH = "streams/v1/index.json"

# Host machine names (uname -m) to the names image servers use.
_ARCH_NAMES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "armv8l": "armhf",
    "i686": "i386",
    "i386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}
ARCHES = frozenset(_ARCH_NAMES.values())

_REMOTE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A fingerprint prefix a user may type (as `lxc image delete 1a2b3c`).
_FP_PREFIX = re.compile(r"^[0-9a-f]{12,64}$")

# The rootfs kinds lxpy can unpack, best first.
ROOTFS_FTYPES = ("root.tar.xz", "squashfs")
META_FTYPE = "lxd.tar.xz"
_COMBINED = {"root.tar.xz": "combined_rootxz_sha256", "squashfs": "combined_squashfs_sha256"}


def host_arch(machine: str | None = None) -> str:
    """The image server's name for this host's architecture."""
    m = machine or platform.machine()
    return _ARCH_NAMES.get(m, m)


def arch_name(name: str) -> str:
    """An architecture as image servers name it (x86_64 -> amd64)."""
    return _ARCH_NAMES.get(name, name)


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    protocol: str = "simplestreams"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "protocol": self.protocol}


def validate_remote_name(value: object) -> str:
    """Raises InvalidArgument: not a remote name (lowercase, digits, '-')."""
    if not isinstance(value, str) or not _REMOTE_NAME.match(value):
        raise InvalidArgument(
            f"invalid remote name {value!r}",
            hint="use 1-31 lowercase letters, digits and '-', starting with a letter",
        )
    return value


def validate_remote(name: object, url: object, protocol: object = "simplestreams") -> Remote:
    """A remote from a request's fields.

    Raises:
        InvalidArgument: a bad name, URL (http or https, with a host) or protocol.
    """
    rname = validate_remote_name(name)
    if protocol not in PROTOCOLS:
        raise InvalidArgument(
            f"unknown remote protocol {protocol!r}", hint="supported: " + ", ".join(PROTOCOLS)
        )
    if not isinstance(url, str) or not url:
        raise InvalidArgument(f"remote {rname}: url must be a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"remote {rname}: {url!r} is not an http:// or https:// URL with a host",
            hint="e.g. https://images.linuxcontainers.org or http://127.0.0.1:8000/mirror",
        )
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise InvalidArgument(f"remote {rname}: {url!r} must have no query, fragment or spaces")
    return Remote(rname, url.rstrip("/"), str(protocol))


def validate_alias(value: object) -> str:
    """Raises InvalidArgument: not an image alias (e.g. web-base, alpine/3.20)."""
    if not isinstance(value, str) or not _ALIAS.match(value) or ".." in value:
        raise InvalidArgument(
            f"invalid image alias {value!r}",
            hint="letters, digits and . _ / + -, starting with a letter or digit",
        )
    if _FINGERPRINT.match(value):
        raise InvalidArgument(f"image alias {value!r} looks like a fingerprint; choose a name")
    return value


def is_fingerprint(value: str) -> bool:
    return bool(_FINGERPRINT.match(value))


def is_fingerprint_prefix(value: str) -> bool:
    return bool(_FP_PREFIX.match(value))


@dataclass(frozen=True)
class ImageRef:
    """What `--image` names: `REMOTE:ALIAS` or a local alias or fingerprint."""

    remote: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.remote}:{self.name}" if self.remote else self.name


def parse_image_ref(value: object) -> ImageRef:
    """Raises InvalidArgument: not REMOTE:ALIAS, an alias or a fingerprint."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"'image' must be a string, got {value!r}")
    remote, sep, name = value.partition(":")
    if not sep:
        remote, name = "", value
    else:
        validate_remote_name(remote)
        if not name:
            raise InvalidArgument(f"image {value!r} names no image after {remote}:")
    if not is_fingerprint_prefix(name):
        validate_alias(name)
    return ImageRef(remote or None, name)


@dataclass(frozen=True)
class Item:
    ftype: str
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RemoteImage:
    """One version of one product: what can be downloaded as an image."""

    product: str
    aliases: tuple[str, ...]
    os: str
    release: str
    arch: str
    variant: str
    version: str
    meta: Item
    rootfs: Item
    fingerprint: str
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.meta.size + self.rootfs.size

    def to_json(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint,
            "aliases": list(self.aliases),
            "distribution": self.os,
            "release": self.release,
            "architecture": self.arch,
            "variant": self.variant,
            "version": self.version,
            "size": self.size,
            "rootfs_type": self.rootfs.ftype,
            "product": self.product,
        }


def products_path(index: object, where: str) -> str:
    """The products file an index.json names for image downloads.

    Raises:
        InvalidArgument: not a simplestreams index, or none for images.
    """
    if not isinstance(index, dict) or not isinstance(index.get("index"), dict):
        raise InvalidArgument(f"{where}: not a simplestreams index (no 'index' object)")
    for entry in index["index"].values():
        if (
            isinstance(entry, dict)
            and entry.get("datatype") == "image-downloads"
            and isinstance(entry.get("path"), str)
        ):
            path = str(entry["path"])
            _check_rel_path(path, where)
            return path
    raise InvalidArgument(f"{where}: the index lists no image-downloads products")


def _check_rel_path(path: str, where: str) -> None:
    if not path or path.startswith("/") or ".." in path.split("/") or "://" in path:
        raise InvalidArgument(f"{where}: path {path!r} must be relative to the server")


def _item(raw: object, where: str) -> Item | None:
    if not isinstance(raw, dict):
        return None
    ftype, path, sha, size = raw.get("ftype"), raw.get("path"), raw.get("sha256"), raw.get("size")
    if not isinstance(ftype, str) or not isinstance(path, str):
        return None
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise InvalidArgument(f"{where}: item {path!r} has no valid sha256")
    if not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"{where}: item {path!r} has no valid size")
    _check_rel_path(path, where)
    return Item(ftype, path, sha.lower(), size)


def _pick(
    items: Mapping[str, object], where: str, rootfs_types: Iterable[str]
) -> tuple[Item, Item, str] | None:
    parsed = [i for raw in items.values() if (i := _item(raw, where)) is not None]
    meta_raw = next(
        (r for r in items.values() if isinstance(r, dict) and r.get("ftype") == META_FTYPE),
        None,
    )
    meta = next((i for i in parsed if i.ftype == META_FTYPE), None)
    if meta is None or meta_raw is None:
        return None
    for ftype in rootfs_types:
        rootfs = next((i for i in parsed if i.ftype == ftype), None)
        if rootfs is None:
            continue
        combined = meta_raw.get(_COMBINED[ftype])
        if combined is None and ftype == "root.tar.xz":
            combined = meta_raw.get("combined_sha256")
        if isinstance(combined, str) and _SHA256.match(combined.lower()):
            return meta, rootfs, combined.lower()
    return None


def parse_products(
    products: object, where: str, rootfs_types: Iterable[str] = ROOTFS_FTYPES
) -> list[RemoteImage]:
    """Every container image (one per product version) in a products file,
    newest version of each product last.

    Products with no container rootfs lxpy can unpack (VM-only ones, or
    squashfs-only when `rootfs_types` lacks it) are left out.

    Raises:
        InvalidArgument: not a products file, or an item with no sha256/size.
    """
    if not isinstance(products, dict) or not isinstance(products.get("products"), dict):
        raise InvalidArgument(f"{where}: not a simplestreams products file (no 'products')")
    types = tuple(rootfs_types)
    out: list[RemoteImage] = []
    for pname, prod in sorted(products["products"].items()):
        if not isinstance(prod, dict) or not isinstance(prod.get("versions"), dict):
            continue
        raw_aliases = prod.get("aliases", "")
        aliases = [a for a in str(raw_aliases).split(",") if a] if raw_aliases else []
        arch = str(prod.get("arch", ""))
        for version, v in sorted(prod["versions"].items()):
            if not isinstance(v, dict) or not isinstance(v.get("items"), dict):
                continue
            picked = _pick(v["items"], f"{where}: {pname} {version}", types)
            if picked is None:
                continue
            meta, rootfs, fp = picked
            out.append(
                RemoteImage(
                    product=str(pname),
                    aliases=tuple(aliases + [f"{a}/{arch}" for a in aliases]),
                    os=str(prod.get("os", "")),
                    release=str(prod.get("release", "")),
                    arch=arch,
                    variant=str(prod.get("variant", "default")),
                    version=str(version),
                    meta=meta,
                    rootfs=rootfs,
                    fingerprint=fp,
                    properties={
                        k: str(prod[k])
                        for k in ("os", "release", "release_title", "variant", "arch")
                        if k in prod
                    },
                )
            )
    return out


def latest(images: Iterable[RemoteImage]) -> list[RemoteImage]:
    """The newest version of each product."""
    best: dict[str, RemoteImage] = {}
    for img in images:
        if img.product not in best or img.version > best[img.product].version:
            best[img.product] = img
    return [best[k] for k in sorted(best)]


def matches(img: RemoteImage, words: Iterable[str]) -> bool:
    """Whether `img` fits every filter word: KEY=VALUE on a column
    (distribution, release, architecture, variant) or text in an alias."""
    fields = img.to_json()
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            if str(fields.get(key, "")).lower() != value.lower():
                return False
        elif not any(word.lower() in a.lower() for a in img.aliases) and (
            word.lower() not in img.os.lower()
        ):
            return False
    return True


def resolve(images: Iterable[RemoteImage], name: str, remote: str, arch: str) -> RemoteImage:
    """The newest image of `remote` that alias or fingerprint `name` names,
    for architecture `arch` unless the alias names another one.

    Raises:
        NotFound: no such alias (with close ones as a hint).
        Unsupported: the alias names only images of another architecture.
    """
    every = list(images)
    if is_fingerprint_prefix(name):
        found = [i for i in every if i.fingerprint.startswith(name)]
    else:
        found = [i for i in every if name in i.aliases]
    if not found:
        known = sorted({a for i in every for a in i.aliases if "/" + i.arch not in a})
        raise NotFound(
            f"image {remote}:{name} not found",
            hint=not_found_hint(name, known, "images there", f"`lxpy image list {remote}:`"),
        )
    named_arch = next((i.arch for i in found if name.endswith("/" + i.arch)), None)
    mine = [i for i in found if i.arch == (named_arch or arch)]
    if not mine or (named_arch is not None and named_arch != arch):
        other = sorted({i.arch for i in found})
        raise Unsupported(
            f"image {remote}:{name} is for {', '.join(other)}; this host is {arch}",
            hint="a container runs the host's architecture: choose an image for " + arch,
        )
    return max(mine, key=lambda i: i.version)
