"""Downloads from an image server: JSON documents and verified files.

A file is downloaded to `PATH.part` beside where it is kept, hashed as it
comes, and renamed to its final name only once its size and sha256 are the
ones the server's products file promised: a partial or damaged download is
never taken for the file. An interrupted download (cancel, Ctrl-C, a lost
connection, lxpyd stopping) leaves its `.part`; the next attempt asks the
server for the rest (an HTTP Range request) and starts over when the server
sends the whole file instead. A `.part` whose whole hashes wrong is deleted.

The blocking work (connect, each chunk read and written) runs in worker
threads, one short hop per chunk, so a cancel takes effect between chunks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from lxpy.errors import LxpyError, NotFound

CHUNK = 1 << 20
TIMEOUT = 30.0
# Index and products files are small; a bigger answer is not one.
MAX_JSON = 64 << 20
USER_AGENT = "lxpy"


def _open(url: str, offset: int = 0) -> Any:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT)  # noqa: S310 (http/https checked)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFound(f"{url}: not on the server (HTTP 404)") from e
        if e.code == 416 and offset:
            # The part is as long as the file or longer: start over.
            return _open(url)
        raise LxpyError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise LxpyError(
            f"{url}: cannot download ({reason})",
            hint="check the remote's URL (`lxpy remote list`) and that the server is reachable",
        ) from e


def _read_json(url: str) -> object:
    with _open(url) as resp:
        data = resp.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise LxpyError(f"{url}: larger than {MAX_JSON >> 20} MiB, not a simplestreams file")
    try:
        return json.loads(data)
    except ValueError as e:
        raise LxpyError(f"{url}: not JSON ({e})") from e


async def get_json(url: str) -> object:
    """The JSON document at `url`.

    Raises:
        NotFound: HTTP 404.
        LxpyError: unreachable, another HTTP error, not JSON, too large.
    """
    return await trio.to_thread.run_sync(_read_json, url)


def _hash_existing(part: Path) -> tuple[Any, int]:
    h = hashlib.sha256()
    n = 0
    with part.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h, n


class _Transfer:
    """One download attempt's blocking state (used from worker threads)."""

    def __init__(self, url: str, part: Path, size: int) -> None:
        self.url, self.part, self.size = url, part, size
        self.resp: Any = None
        self.file: Any = None
        self.hash: Any = hashlib.sha256()
        self.done = 0
        self.resumed = False

    def start(self) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        if 0 < have < self.size:
            self.hash, self.done = _hash_existing(self.part)
        resp = _open(self.url, self.done)
        if self.done and resp.status == 206:
            self.resumed = True
            self.file = self.part.open("ab")
        else:
            # No range answered (or nothing to resume): the whole file.
            self.hash, self.done = hashlib.sha256(), 0
            self.file = self.part.open("wb")
        self.resp = resp

    def chunk(self) -> int:
        try:
            # What has come, up to CHUNK: progress moves, and a cancel is
            # seen, at the pace the bytes arrive.
            data = self.resp.read1(CHUNK)
        except (http.client.HTTPException, OSError) as e:
            raise LxpyError(
                f"{self.url}: the download broke off after {self.done} of {self.size} bytes "
                f"({type(e).__name__}: {e})",
                hint="try again: the part already downloaded is kept and the rest is asked for",
            ) from e
        if data:
            if self.done + len(data) > self.size:
                self.part.unlink(missing_ok=True)
                raise LxpyError(
                    f"{self.url}: the server sent more than the {self.size} bytes "
                    "its products file lists"
                )
            self.file.write(data)
            self.hash.update(data)
            self.done += len(data)
        return len(data)

    def close(self) -> None:
        for f in (self.file, self.resp):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


async def download(
    url: str,
    dest: Path,
    sha256: str,
    size: int,
    progress: Callable[[int, int, float], None],
) -> bool:
    """Download `url` to `dest`, verified against `sha256` and `size`.

    `progress(done, size, rate)` is called as bytes come (rate: bytes per
    second of this attempt). Returns whether an earlier partial download
    was resumed.

    Raises:
        LxpyError: unreachable, an HTTP error, or the file is not what the
            server's products file says (size, sha256): its part is deleted.
        trio.Cancelled: the `.part` stays, to be resumed.
    """
    part = dest.with_name(dest.name + ".part")
    t = _Transfer(url, part, size)
    await trio.to_thread.run_sync(t.start)
    started, first = time.monotonic(), t.done
    last = 0.0
    try:
        while True:
            n = await trio.to_thread.run_sync(t.chunk)
            now = time.monotonic()
            if n == 0 or now - last >= 0.2:
                last = now
                progress(t.done, size, (t.done - first) / max(now - started, 1e-3))
            if n == 0:
                break
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(t.close)
    if t.done < size:
        # The server closed early: what came is kept to be resumed.
        raise LxpyError(
            f"{url}: the download broke off after {t.done} of {size} bytes",
            hint="try again: the part already downloaded is kept and the rest is asked for",
        )
    actual = t.hash.hexdigest()
    if actual != sha256:
        await trio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
        raise LxpyError(
            f"{url}: the download is damaged (sha256 {actual}, the server's index says "
            f"{sha256}); nothing was kept",
            hint="try again; if it persists, the server's files do not match its index",
        )
    await trio.to_thread.run_sync(os.replace, part, dest)
    return t.resumed
