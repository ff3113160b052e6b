"""A local image server for the tests: a simplestreams tree made from
rootfs directories, served over HTTP on loopback.

The tree has the layout and fields of images.linuxcontainers.org
(streams/v1/index.json, streams/v1/images.json, images/OS/RELEASE/ARCH/
VARIANT/VERSION/{lxd.tar.xz,root.tar.xz}); the server answers Range
requests (as real mirrors do), counts every request by path, and can be
told to cut a file short once (a lost connection mid-download).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lxpy.build.tarball import sha256_file as sha256


def metadata_tarball(path: Path, arch: str = "x86_64", description: str = "test image") -> None:
    """An lxd.tar.xz: metadata.yaml (and an empty templates/)."""
    yaml = (
        f"architecture: {arch}\n"
        "creation_date: 1733500000\n"
        "properties:\n"
        f"  description: {description}\n"
        "  os: busybox\n"
        '  release: "1.36"\n'
        "  variant: default\n"
        "templates: {}\n"
    ).encode()
    with tarfile.open(path, "w:xz") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(yaml)
        tar.addfile(info, io.BytesIO(yaml))
        d = tarfile.TarInfo("templates")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)


def rootfs_tarball(rootfs: Path, path: Path) -> None:
    """A root.tar.xz of the directory `rootfs`, owners and xattrs kept."""
    subprocess.run(
        ["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cJf", str(path), "."],
        check=True,
    )


@dataclass
class Product:
    """One product version: `root` is its root.tar.xz (made by the test)."""

    os: str
    release: str
    arch: str
    variant: str
    version: str
    root: Path
    meta_arch: str = "x86_64"
    aliases: list[str] = field(default_factory=list)
    # A wrong sha256 for root.tar.xz in the products file (a damaged mirror).
    bad_sha: bool = False


def build_tree(top: Path, products: list[Product]) -> dict[str, str]:
    """Write a simplestreams tree under `top`; fingerprint by product key."""
    fps = {}
    entries: dict[str, dict[str, Any]] = {}
    for p in products:
        rel = f"images/{p.os}/{p.release}/{p.arch}/{p.variant}/{p.version}"
        d = top / rel
        d.mkdir(parents=True, exist_ok=True)
        meta = d / "lxd.tar.xz"
        metadata_tarball(meta, p.meta_arch)
        root = d / "root.tar.xz"
        root.write_bytes(p.root.read_bytes())
        combined = hashlib.sha256(meta.read_bytes() + root.read_bytes()).hexdigest()
        root_sha = sha256(root)
        if p.bad_sha:
            root_sha = hashlib.sha256(b"not this").hexdigest()
        key = f"{p.os}:{p.release}:{p.arch}:{p.variant}"
        fps[key] = combined
        aliases = p.aliases or [f"{p.os}/{p.release}/{p.variant}", f"{p.os}/{p.release}"]
        version = {
            "items": {
                "lxd.tar.xz": {
                    "ftype": "lxd.tar.xz",
                    "path": f"{rel}/lxd.tar.xz",
                    "sha256": sha256(meta),
                    "size": meta.stat().st_size,
                    "combined_sha256": combined,
                    "combined_rootxz_sha256": combined,
                },
                "root.tar.xz": {
                    "ftype": "root.tar.xz",
                    "path": f"{rel}/root.tar.xz",
                    "sha256": root_sha,
                    "size": root.stat().st_size,
                },
            }
        }
        if key in entries:
            entries[key]["versions"][p.version] = version
            continue
        entries[key] = {
            "aliases": ",".join(aliases),
            "arch": p.arch,
            "os": p.os.capitalize(),
            "release": p.release,
            "release_title": p.release,
            "variant": p.variant,
            "requirements": {},
            "versions": {p.version: version},
        }
    streams = top / "streams" / "v1"
    streams.mkdir(parents=True, exist_ok=True)
    (streams / "images.json").write_text(
        json.dumps(
            {
                "content_id": "images",
                "datatype": "image-downloads",
                "format": "products:1.0",
                "products": entries,
            }
        )
    )
    (streams / "index.json").write_text(
        json.dumps(
            {
                "format": "index:1.0",
                "index": {
                    "images": {
                        "datatype": "image-downloads",
                        "path": "streams/v1/images.json",
                        "format": "products:1.0",
                        "products": sorted(entries),
                    }
                },
            }
        )
    )
    return fps


class Server:
    """An HTTP server on 127.0.0.1 serving `top` (GET, Range bytes=N-)."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []
        # path -> bytes to send before the connection drops (once).
        self.cut: dict[str, int] = {}
        # Seconds to pause after each 64 KiB sent (a slow server).
        self.pause = 0.0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                with server._lock:
                    server.requests[path] = server.requests[path] + 1
                    cut = server.cut.pop(path, None)
                    rng = self.headers.get("Range")
                    if rng:
                        server.ranges.append((path, rng))
                f = (server.top / path.lstrip("/")).resolve()
                if not f.is_file() or not str(f).startswith(str(server.top.resolve())):
                    self.send_error(404)
                    return
                data = f.read_bytes()
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    # Gone mid-body, as a dropped connection is.
                    self.connection.shutdown(2)
                    return
                if not server.pause:
                    self.wfile.write(body)
                    return
                for at in range(0, len(body), 1 << 16):
                    try:
                        self.wfile.write(body[at : at + (1 << 16)])
                        self.wfile.flush()
                    except OSError:
                        return  # the client went away
                    time.sleep(server.pause)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def file_requests(self) -> int:
        """Requests for image files (not the index or products file)."""
        return sum(n for p, n in self.requests.items() if p.endswith(".tar.xz"))


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
