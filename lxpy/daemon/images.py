"""Images: image servers (remotes), the local image cache, pulls, publish.

An image is kept as a read-only volume of the pool's template tree, named
`@FINGERPRINT` (a name no template definition can have), with its metadata
in ROOT/images/FINGERPRINT.json; a container made from it is one snapshot
of that volume, exactly as from a template.

A pull is an operation (progress, log, cancel) and an intent of the
journal: its metadata and rootfs tarballs are downloaded into
ROOT/images/downloads (verified by size and sha256 before they are used,
kept as `.part` while incomplete so a later pull resumes), the rootfs is
checked and unpacked into a staging volume, the volume is sealed and only
then is the metadata written. A failure, cancel or crash at any step
leaves no image (lxpy.daemon.recovery settles a crash after the seal).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import trio

from lxpy.build import fetch, imagefile
from lxpy.build.rootfs import init_problem
from lxpy.build.setup import Flavour, clear_machine_id, init_flavour
from lxpy.daemon.events import now_iso
from lxpy.daemon.journal import Intent
from lxpy.daemon.lifecycle import Lifecycle
from lxpy.daemon.operations import Operation, Report
from lxpy.daemon.state import Daemon
from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound, Unsupported
from lxpy.kernel.inroot import Rootfs
from lxpy.model import images as im
from lxpy.model.names import validate_name
from lxpy.model.paths import image_volume
from lxpy.model.state import State
from lxpy.model.suggest import not_found_hint

log = logging.getLogger("lxpyd.images")

PULL_KIND = "image-pull"
# How long a remote's products file is trusted before it is fetched again.
CATALOG_TTL = 300.0
# The signals that ask each known init to power off and reboot (as in
# templates/busybox.toml and debian-bookworm.toml; LXC uses the same for
# systemd); other inits get the template defaults.
_SIGNALS = {
    Flavour.BUSYBOX: {"halt_signal": "SIGUSR2", "reboot_signal": "SIGTERM"},
    Flavour.SYSTEMD: {"halt_signal": "SIGRTMIN+3", "reboot_signal": "SIGINT"},
}
# A first-boot unit for systemd systems with OpenSSH: publish removes the
# host keys, so each container made from the image makes its own.
_SSH_KEYGEN_UNIT = """\
[Unit]
Description=Generate SSH host keys (removed when the image was published)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
_SSH_KEYGEN_NAME = "lxpy-ssh-keygen.service"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class Images:
    """Remotes, the image cache, pulls and publish of daemon `d`; a publish
    asks `lifecycle` whether the container runs."""

    def __init__(self, d: Daemon, lifecycle: Lifecycle) -> None:
        self.d = d
        self.lifecycle = lifecycle
        # Pulls under way by fingerprint: one at a time per image.
        self.pulling: dict[str, Operation] = {}
        self._catalogs: dict[str, tuple[float, list[im.RemoteImage]]] = {}

    # -- remotes ------------------------------------------------------------
    async def remotes(self) -> dict[str, im.Remote]:
        saved = await self.d.files(self.d.registry.remotes)
        if saved is None:
            return {n: im.Remote(n, u) for n, u in im.DEFAULT_REMOTES.items()}
        out = {}
        for name, raw in sorted(saved.items()):
            if isinstance(raw, dict):
                try:
                    out[name] = im.validate_remote(name, raw.get("url"), raw.get("protocol"))
                except InvalidArgument as e:
                    log.warning("ignoring remote %s: %s", name, e.message)
        return out

    async def _save_remotes(self, remotes: dict[str, im.Remote]) -> None:
        data: dict[str, object] = {n: r.to_json() for n, r in remotes.items()}
        await self.d.files(self.d.registry.save_remotes, data)

    async def list_remotes(self) -> list[dict[str, object]]:
        return [r.to_json() for r in (await self.remotes()).values()]

    async def add_remote(self, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/remotes: {"name", "url", "protocol"}.

        Raises:
            InvalidArgument: a bad field. AlreadyExists: the name is taken.
        """
        remote = im.validate_remote(
            body.get("name"), body.get("url"), body.get("protocol", "simplestreams")
        )
        remotes = await self.remotes()
        if remote.name in remotes:
            raise AlreadyExists(
                f"remote {remote.name!r} already exists ({remotes[remote.name].url})",
                hint=f"remove it first (`lxpy remote remove {remote.name}`)",
            )
        remotes[remote.name] = remote
        await self._save_remotes(remotes)
        self.d.bus.lifecycle("remote-added", f"remotes/{remote.name}", {"url": remote.url})
        return remote.to_json()

    async def remove_remote(self, name: str) -> None:
        remotes = await self.remotes()
        self._remote(remotes, name)
        del remotes[name]
        await self._save_remotes(remotes)
        self._catalogs = {}
        self.d.bus.lifecycle("remote-removed", f"remotes/{name}")

    @staticmethod
    def _remote(remotes: dict[str, im.Remote], name: str) -> im.Remote:
        if name not in remotes:
            raise NotFound(
                f"remote {name!r} not found",
                hint=not_found_hint(name, remotes, "known remotes", "`lxpy remote list`"),
            )
        return remotes[name]

    # -- a remote's images --------------------------------------------------
    async def catalog(self, remote_name: str, refresh: bool = False) -> list[im.RemoteImage]:
        """Every container image `remote_name` offers (all versions).

        Raises:
            NotFound: no such remote. LxpyError: the server cannot be read,
                or what it serves is not simplestreams.
        """
        remote = self._remote(await self.remotes(), remote_name)
        cached = self._catalogs.get(remote.url)
        if cached is not None and not refresh and time.monotonic() - cached[0] < CATALOG_TTL:
            return cached[1]
        index_url = f"{remote.url}/{im.INDEX_PATH}"
        index = await fetch.get_json(index_url)
        path = im.products_path(index, index_url)
        products_url = f"{remote.url}/{path}"
        products = await fetch.get_json(products_url)
        found = im.parse_products(products, products_url, ("root.tar.xz",))
        self._catalogs[remote.url] = (time.monotonic(), found)
        return found

    async def remote_images(self, remote: str, words: list[str]) -> list[dict[str, object]]:
        """GET /1.0/remotes/NAME/images: the newest version of each product
        matching every filter word."""
        found = im.latest(await self.catalog(remote))
        return [i.to_json() for i in found if im.matches(i, words)]

    # -- the local cache ----------------------------------------------------
    async def _all(self) -> dict[str, dict[str, object]]:
        d = self.d
        metas = await d.files(d.registry.all_image_meta)
        # Metadata whose volume is gone (deleted by hand) is no image.
        exists = await d.storage(
            lambda: {fp for fp in metas if d.backend.template_exists(image_volume(fp))}
        )
        return {fp: m for fp, m in metas.items() if fp in exists}

    async def list_local(self) -> list[dict[str, object]]:
        return [self._describe(fp, m) for fp, m in sorted((await self._all()).items())]

    @staticmethod
    def _describe(fp: str, meta: dict[str, object]) -> dict[str, object]:
        return {**meta, "fingerprint": fp}

    async def find_local(self, ref: str) -> tuple[str, dict[str, object]]:
        """The cached image that alias or fingerprint (prefix) `ref` names.

        Raises:
            NotFound: none (with close aliases as a hint).
            InvalidArgument: a fingerprint prefix that several images share.
        """
        every = await self._all()
        if im.is_fingerprint_prefix(ref):
            hits = [fp for fp in every if fp.startswith(ref)]
            if len(hits) > 1:
                raise InvalidArgument(f"fingerprint {ref} is ambiguous: give more of it")
            if hits:
                return hits[0], every[hits[0]]
        for fp, meta in every.items():
            if ref in _aliases(meta):
                return fp, meta
        aliases = [a for m in every.values() for a in _aliases(m)]
        raise NotFound(
            f"image {ref!r} not found",
            hint=not_found_hint(ref, aliases, "local image aliases", "`lxpy image list`"),
        )

    async def get(self, ref: str) -> dict[str, object]:
        fp, meta = await self.find_local(ref)
        return self._describe(fp, meta)

    async def delete(self, ref: str) -> None:
        """DELETE /1.0/images/REF. Containers made from it keep their rootfs.

        Raises:
            NotFound. Busy: it is being pulled.
        """
        fp, _meta = await self.find_local(ref)
        if fp in self.pulling:
            raise Busy(f"image {fp[:12]} is being downloaded", hint="cancel the pull first")
        d = self.d
        # The metadata first: an image without it is not listed, and the
        # volume left by a crash here is removed by the next delete.
        await d.files(d.registry.delete_image_meta, fp)
        await d.storage(d.backend.delete_template, image_volume(fp))
        d.bus.lifecycle("image-deleted", f"images/{fp}")

    async def set_aliases(self, ref: str, add: list[str], remove: list[str]) -> dict[str, object]:
        """PATCH /1.0/images/REF: add and remove aliases.

        Raises:
            NotFound, InvalidArgument, AlreadyExists (an alias another image has).
        """
        fp, meta = await self.find_local(ref)
        for a in add:
            im.validate_alias(a)
        await self._check_free(add, fp)
        aliases = [a for a in _aliases(meta) if a not in remove]
        aliases += [a for a in add if a not in aliases]
        meta = {**meta, "aliases": aliases}
        await self.d.files(self.d.registry.save_image_meta, fp, meta)
        return self._describe(fp, meta)

    async def _check_free(self, aliases: list[str], mine: str | None = None) -> None:
        for fp, meta in (await self._all()).items():
            taken = [a for a in aliases if a in _aliases(meta)]
            if taken and fp != mine:
                raise AlreadyExists(
                    f"image alias {taken[0]!r} is taken by image {fp[:12]}",
                    hint=f"remove it there first "
                    f"(`lxpy image alias {fp[:12]} {taken[0]} --remove`)",
                )

    # -- pull -----------------------------------------------------------------
    async def _resolve_remote(self, ref: im.ImageRef) -> im.RemoteImage:
        assert ref.remote is not None
        found = await self.catalog(ref.remote)
        return im.resolve(found, ref.name, ref.remote, im.host_arch())

    async def start_pull(self, image: object) -> Operation:
        """POST /1.0/images/pull {"image": "REMOTE:ALIAS"}: the operation
        (already `success` when the image is cached).

        Raises:
            InvalidArgument, NotFound (remote, alias), Unsupported (arch),
            LxpyError (the server).
        """
        ref = im.parse_image_ref(image)
        if ref.remote is None:
            raise InvalidArgument(
                f"image {image!r} names no remote",
                hint="pull REMOTE:ALIAS, e.g. images:alpine/3.20",
            )
        rimg = await self._resolve_remote(ref)
        op = self.pulling.get(rimg.fingerprint)
        if op is not None:
            return op
        if await self._cached(rimg.fingerprint):
            return self.d.ops.done_now(PULL_KIND, f"images/{rimg.fingerprint}", "cached")
        return self.pulling.get(rimg.fingerprint) or self._start(ref, rimg)

    async def _cached(self, fp: str) -> bool:
        d = self.d
        meta = await d.files(d.registry.image_meta, fp)
        return meta is not None and await d.storage(d.backend.template_exists, image_volume(fp))

    async def ensure(self, image: object) -> tuple[str, dict[str, object]]:
        """The cached image `image` names, pulled first when it names a
        remote's image not cached yet (joining a pull under way).

        Raises:
            what start_pull and find_local raise; LxpyError: the pull failed.
        """
        ref = im.parse_image_ref(image)
        if ref.remote is None:
            return await self.find_local(ref.name)
        op = await self.start_pull(image)
        await op.done.wait()
        op.raise_if_failed()
        rimg = await self._resolve_remote(ref)
        return await self.find_local(rimg.fingerprint)

    def _start(self, ref: im.ImageRef, rimg: im.RemoteImage) -> Operation:
        async def work(op: Operation) -> None:
            try:
                await self._pull(op, ref, rimg)
            finally:
                self.pulling.pop(rimg.fingerprint, None)

        op = self.d.ops.start(PULL_KIND, f"images/{rimg.fingerprint}", work)
        self.pulling[rimg.fingerprint] = op
        return op

    async def _download(
        self, op: Operation, remote: im.Remote, item: im.Item, base: float, share: float, what: str
    ) -> Path:
        dest = self.d.registry.downloads / item.sha256
        url = f"{remote.url}/{item.path}"

        def progress(done: int, size: int, rate: float) -> None:
            frac = done / size if size else 1.0
            op.set_progress(
                base + share * frac,
                f"downloading {what}: {_human(done)} of {_human(size)} at {_human(rate)}/s",
            )

        if await self.d.files(dest.exists):
            # Verified when it was renamed here; left by a pull that failed later.
            op.add_log(f"{what}: already downloaded")
            return dest
        op.add_log(f"downloading {url} ({_human(item.size)})")
        resumed = await fetch.download(url, dest, item.sha256, item.size, progress)
        op.add_log(f"{what}: sha256 {item.sha256} verified" + (" (resumed)" if resumed else ""))
        return dest

    async def _pull(self, op: Operation, ref: im.ImageRef, rimg: im.RemoteImage) -> None:
        d, fp = self.d, rimg.fingerprint
        assert ref.remote is not None
        remote = self._remote(await self.remotes(), ref.remote)
        op.set_progress(0.0, "preparing")
        total = max(rimg.size, 1)
        meta_share = rimg.meta.size / total * 0.9
        meta_file = await self._download(op, remote, rimg.meta, 0.0, meta_share, "metadata")
        root_file = d.registry.downloads / rimg.rootfs.sha256
        try:
            fields = await d.files(imagefile.read_metadata, meta_file)
            arch = im.arch_name(fields["architecture"])
            if arch != im.host_arch() or rimg.arch != im.host_arch():
                raise Unsupported(
                    f"image {ref} is for {arch}; this host is {im.host_arch()}",
                    hint="a container runs the host's architecture: choose an image for "
                    + im.host_arch(),
                )
            await self._download(op, remote, rimg.rootfs, meta_share, 0.9 - meta_share, "rootfs")
            await self._commit(op, ref, rimg, remote, fields, root_file)
        finally:
            # Verified files are not kept past this pull, whatever its end:
            # an image that was refused must not stay on disk. A `.part`
            # (an interrupted download) stays, to be resumed.
            with trio.CancelScope(shield=True):
                for f in (meta_file, root_file):
                    await d.files(lambda f=f: f.unlink(missing_ok=True))
        op.set_progress(1.0, "done")
        d.bus.lifecycle("image-pulled", f"images/{fp}", {"image": str(ref)})

    async def _commit(
        self,
        op: Operation,
        ref: im.ImageRef,
        rimg: im.RemoteImage,
        remote: im.Remote,
        fields: dict[str, str],
        root_file: Path,
    ) -> None:
        d, fp = self.d, rimg.fingerprint
        vol = image_volume(fp)
        op.set_progress(0.9, "checking the rootfs tarball")
        members = await d.files(imagefile.check_rootfs_tarball, root_file)
        op.add_log(f"rootfs tarball: {members} entries, none leaves the rootfs")
        meta: dict[str, object] = {
            "aliases": [],
            "source": {"remote": ref.remote, "url": remote.url, "alias": ref.name},
            "distribution": rimg.os,
            "release": rimg.release,
            "architecture": rimg.arch,
            "variant": rimg.variant,
            "version": rimg.version,
            "description": fields.get("properties.description", ""),
            "size": rimg.size,
            "created_at": now_iso(),
            "published_from": None,
        }
        op.set_progress(0.92, "unpacking")
        files = [rimg.meta.sha256, rimg.rootfs.sha256]
        async with d.journal.begin("image-pull", name=fp, meta=meta, files=files) as intent:
            target = await d.storage(d.backend.begin_template, vol)
            intent.undo(lambda: d.storage(d.backend.abort_template, vol), f"remove {vol} staging")
            intent.step("staged")
            await imagefile.unpack_rootfs(root_file, Path(target), Report(op))
            meta["defaults"] = await d.files(_prepare_rootfs, Path(target), f"image {ref}")
            intent.step("unpacked")
            with trio.CancelScope(shield=True):
                await d.storage(d.backend.commit_template, vol, _sealed(intent))
                await d.files(d.registry.save_image_meta, fp, meta)
                intent.step("committed")

    # -- publish --------------------------------------------------------------
    async def publish(self, body: dict[str, object]) -> dict[str, object]:
        """POST /1.0/images: {"container", "snapshot"?, "aliases"?,
        "description"?}: a new image from a stopped container or a snapshot.

        Raises:
            InvalidArgument, NotFound (container, snapshot), Busy (running),
            AlreadyExists (an alias taken).
        """
        d = self.d
        name = validate_name(body.get("container"), "container")
        snap = body.get("snapshot")
        if snap is not None:
            snap = validate_name(snap, "snapshot")
        raw_aliases = body.get("aliases", [])
        if not isinstance(raw_aliases, list):
            raise InvalidArgument(f"'aliases' must be a list, got {raw_aliases!r}")
        aliases = [im.validate_alias(a) for a in raw_aliases]
        desc = body.get("description", "")
        if not isinstance(desc, str):
            raise InvalidArgument(f"'description' must be a string, got {desc!r}")
        await self._check_free(aliases)
        fp = secrets.token_hex(32)
        vol = image_volume(fp)
        async with d.table.lock(name):
            record = d.table.require(name)
            if snap is None:
                src = d.backend.container_path(name)
                state = d.states.get(name)
                # A running rootfs is changing under the copy: stopped only.
                if name in self.lifecycle.runs or state not in (State.STOPPED, State.ERROR):
                    raise Busy(
                        f"cannot publish container {name!r} while it is {state}",
                        hint=f"stop it first (`lxpy stop {name}`), or publish a snapshot",
                    )
            else:
                src = d.backend.snapshot_path(name, snap)
                if not await d.storage(src.exists):
                    raise NotFound(f"container {name!r} has no snapshot {snap!r}")
            what = f"{name}/{snap}" if snap else name
            async with d.journal.begin("image-publish", name=fp) as intent:
                target = await d.storage(d.backend.begin_template_from, vol, src)
                intent.undo(
                    lambda: d.storage(d.backend.abort_template, vol), f"remove {vol} staging"
                )
                intent.step("staged")
                defaults, notes = await d.files(_reset_identity, Path(target), f"image of {what}")
                with trio.CancelScope(shield=True):
                    await d.storage(d.backend.commit_template, vol, _sealed(intent))
                    info = await d.files(_os_release, d.backend.template_path(vol))
                    meta: dict[str, object] = {
                        "aliases": aliases,
                        "source": None,
                        "distribution": info.get("ID", ""),
                        "release": info.get("VERSION_ID", ""),
                        "architecture": im.host_arch(),
                        "variant": "published",
                        "version": now_iso(),
                        "description": desc or f"published from {what}",
                        "size": None,
                        "created_at": now_iso(),
                        "published_from": {"container": name, "snapshot": snap},
                        "template": record.template,
                        "defaults": defaults,
                        "reset": notes,
                    }
                    await d.files(d.registry.save_image_meta, fp, meta)
                    intent.step("committed")
        d.bus.lifecycle("image-published", f"images/{fp}", {"container": name, "snapshot": snap})
        return self._describe(fp, meta)


def _sealed(intent: Intent) -> Callable[[str], None]:
    # An image's volume never replaces an older one (a fingerprint names
    # one content): only the seal is a step of its own.
    def step(name: str) -> None:
        if name == "sealed":
            intent.step(name)

    return step


def _aliases(meta: dict[str, object]) -> list[str]:
    a = meta.get("aliases")
    return [str(x) for x in a] if isinstance(a, list) else []


def _prepare_rootfs(path: Path, label: str) -> dict[str, str]:
    """Check a pulled image's rootfs can run as a container and give each
    container its own machine-id. Returns its init's defaults.

    Raises:
        Unsupported: its /sbin/init cannot be run (naming why).
    """
    with Rootfs(path, label) as root:
        problem = init_problem(root, "/sbin/init")
        if problem is not None:
            raise Unsupported(
                f"{label}: its init /sbin/init {problem}",
                hint="lxpy containers boot the image's own init; choose a system image",
            )
        (path / "dev").mkdir(mode=0o755, exist_ok=True)
        clear_machine_id(root)
        return dict(_SIGNALS.get(init_flavour(root, "/sbin/init"), {}))


def _reset_identity(path: Path, label: str) -> tuple[dict[str, str], list[str]]:
    """What makes a machine one machine, removed from a rootfs about to be
    an image: the machine-id emptied (systemd makes a new one at first
    boot), SSH host keys removed, and on a systemd system with OpenSSH a
    first-boot unit that makes new keys. Returns the init's defaults and a
    note per change."""
    notes = []
    with Rootfs(path, label) as root:
        clear_machine_id(root)
        notes.append("machine-id emptied")
        if root.is_dir("etc/ssh"):
            keys = [n for n in root.listdir("etc/ssh") if n.startswith("ssh_host_") and "_key" in n]
            for k in keys:
                root.remove(f"etc/ssh/{k}")
            if keys:
                notes.append(f"SSH host keys removed ({len(keys)} files)")
            flavour = init_flavour(root, "/sbin/init")
            if flavour is Flavour.SYSTEMD and root.is_dir("etc/systemd/system"):
                unit = f"etc/systemd/system/{_SSH_KEYGEN_NAME}"
                root.write(unit, _SSH_KEYGEN_UNIT)
                root.makedirs("etc/systemd/system/multi-user.target.wants")
                root.symlink(
                    f"etc/systemd/system/multi-user.target.wants/{_SSH_KEYGEN_NAME}",
                    f"/{unit}",
                )
                notes.append(f"{_SSH_KEYGEN_NAME} makes new host keys at first boot")
        defaults = dict(_SIGNALS.get(init_flavour(root, "/sbin/init"), {}))
    return defaults, notes


def _os_release(path: Path) -> dict[str, str]:
    with Rootfs(path, "image") as root:
        try:
            text = root.read_text("etc/os-release") or root.read_text("usr/lib/os-release")
        except LxpyError:
            text = None
    out = {}
    for line in (text or "").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip().strip("\"'")
    return out
