"""Asyncio client of lxpyd's HTTP/JSON API (docs/api.md) for the TUI.

The same wire as lxpy.api.client (one connection per request, `Connection:
close`, bodies framed by Content-Length, chunked coding or the end of the
connection) on asyncio streams, so the Textual app never blocks its loop.
URL building, socket resolution and the hints come from the sync client,
so both clients name paths and failures the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from lxpy.api.client import (
    _ct,
    _dev,
    _op,
    _snap,
    _vol,
    body_length,
    decode_json,
    encode_request,
    image_path,
    lost,
    parse_chunk_size,
    parse_header_line,
    parse_status_line,
    quote,
    resolve_socket,
    response_error,
    timed_out,
    unreachable,
    wait_fields,
)
from lxpy.api.streams import (
    ERROR,
    EXIT,
    PROTOCOL,
    STDIN,
    STDOUT,
    FrameDecoder,
    frame,
    parse_json,
)
from lxpy.api.transfer import EXPORT_PATH, IMPORT_PATH, query
from lxpy.errors import LxpyError, NotFound, from_json

# Bounds on a status line or header line, and on their number, so a
# confused peer cannot make the client buffer without end.
_MAX_LINE = 65536
_MAX_HEADERS = 100


class AsyncResponse:
    """A response whose head has been read; the body is read as it arrives."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._where = where
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}

    async def _line(self) -> bytes:
        try:
            return await self._reader.readline()
        except ValueError:
            # asyncio's StreamReader limit (_MAX_LINE) was passed.
            raise lost(self._where, "line too long") from None
        except OSError as e:
            raise lost(self._where, e.strerror or str(e)) from None

    async def read_head(self) -> None:
        """Read the status line and headers.

        Raises:
            DaemonUnavailable: when the peer hangs up or does not speak HTTP.
        """
        self.status, self.reason = parse_status_line(await self._line(), self._where)
        for _ in range(_MAX_HEADERS):
            header = parse_header_line(await self._line(), self._where)
            if header is None:
                return
            self.headers[header[0]] = header[1]
        raise lost(self._where, "too many headers")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive, whatever its framing."""
        left = body_length(self.headers, self._where)
        try:
            if left == -1:
                async for data in self._chunked():
                    yield data
            elif left is not None:
                while left > 0:
                    data = await self._reader.read(min(left, 65536))
                    if not data:
                        raise lost(self._where, "body shorter than its Content-Length")
                    left -= len(data)
                    yield data
            else:
                while data := await self._reader.read(65536):
                    yield data
        except OSError as e:
            raise lost(self._where, e.strerror or str(e)) from None

    async def _chunked(self) -> AsyncIterator[bytes]:
        while size := parse_chunk_size(await self._line(), self._where):
            try:
                data = await self._reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise lost(self._where, "connection closed inside a chunk") from None
            await self._line()  # the CRLF after the chunk data
            yield data
        while await self._line() not in (b"\r\n", b"\n", b""):
            pass

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([c async for c in self.chunks()])

    async def json(self) -> Any:
        """The body parsed as JSON (None for an empty body)."""
        return decode_json(await self.read(), self._where)

    async def error(self) -> LxpyError:
        """The error this (4xx/5xx) response carries."""
        try:
            body = await self.read()
        except LxpyError:
            body = b""
        return response_error(self.status, self.reason, body, self._where)

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


class EventStream:
    """An open NDJSON stream: iterate it for objects, close it when done.

    The stream is subscribed once `AsyncClient.open_stream` returns, so a
    caller can list what exists and then apply the events that follow
    without missing any in between.
    """

    def __init__(self, resp: AsyncResponse, where: str) -> None:
        self._resp = resp
        self._where = where

    async def __aiter__(self) -> AsyncIterator[Any]:
        pending = b""
        async for chunk in self._resp.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield _decode_line(line, self._where)
        if pending.strip():
            yield _decode_line(pending, self._where)

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _decode_line(line: bytes, where: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise LxpyError(
            f"lxpyd at {where} sent a stream line that is not JSON: {line[:80]!r}"
        ) from None


class AsyncClient:
    """A connection-per-request asyncio client of lxpyd.

    Args:
        socket_path: the daemon's socket; None for $LXPY_SOCKET or the default.
        timeout: seconds a request may take; None waits as long as it takes.
            Streams are bounded only until their head is read.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, timeout: float | None = 30
    ) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout

    # -- transport ---------------------------------------------------------

    async def open(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
    ) -> AsyncResponse:
        """Send one request; return the response once its head is read.

        The caller reads the body and closes the response.

        Raises:
            DaemonUnavailable: when the daemon cannot be reached or hangs up.
        """
        return await self._send(encode_request(method, path, body, query))

    async def _send(self, data: bytes, upgrade: bool = False) -> AsyncResponse:
        # One request on a new connection; its response once the head is
        # read (with `upgrade`, refused unless it is the 101).
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=_MAX_LINE)
        except OSError as e:
            raise unreachable(self.socket_path, e) from None
        resp = AsyncResponse(reader, writer, self.socket_path)
        try:
            writer.write(data)
            await writer.drain()
            await resp.read_head()
            if upgrade and resp.status != 101:
                raise await resp.error()
            return resp
        except OSError as e:
            await resp.aclose()
            raise lost(self.socket_path, e.strerror or str(e)) from None
        except BaseException:
            await resp.aclose()
            raise

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
        text: bool = False,
    ) -> Any:
        resp = await self.open(method, path, body, query)
        try:
            if resp.status >= 400:
                raise await resp.error()
            if text:
                return (await resp.read()).decode("utf-8", "replace")
            return await resp.json()
        finally:
            await resp.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
        text: bool = False,
    ) -> Any:
        """One API call: the parsed JSON answer (the text with text=True).

        Args:
            method: HTTP method.
            path: absolute path under /1.0 (segments already quoted).
            body: JSON-able request body, or None.
            query: query parameters; True is sent as 1, None/False are left out.
            text: return the body as text instead of parsing JSON.

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached or does not
                answer within the client's timeout.
        """
        if self.timeout is None:
            return await self._call(method, path, body, query, text)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._call(method, path, body, query, text)
        except TimeoutError:
            raise timed_out(self.socket_path, self.timeout) from None

    async def open_stream(
        self, path: str, query: Mapping[str, object] | None = None
    ) -> EventStream:
        """Open an NDJSON stream; it is subscribed when this returns.

        Raises:
            LxpyError: for an error answer.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.open("GET", path, None, query)
        except TimeoutError:
            raise timed_out(self.socket_path, self.timeout) from None
        if resp.status >= 400:
            try:
                raise await resp.error()
            finally:
                await resp.aclose()
        return EventStream(resp, self.socket_path)

    # -- endpoints (docs/api.md) ---------------------------------------------

    async def server_info(self) -> dict[str, Any]:
        return await self.request("GET", "/1.0")

    async def templates(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/1.0/templates")

    # -- images and remotes -------------------------------------------------
    async def remotes(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/1.0/remotes")

    async def add_remote(
        self, name: str, url: str, protocol: str = "simplestreams"
    ) -> dict[str, Any]:
        body = {"name": name, "url": url, "protocol": protocol}
        return await self.request("POST", "/1.0/remotes", body)

    async def remove_remote(self, name: str) -> None:
        await self.request("DELETE", f"/1.0/remotes/{quote(name, 'remote name')}")

    async def remote_images(
        self, remote: str, filter: str = "", refresh: bool = False
    ) -> list[dict[str, Any]]:
        path = f"/1.0/remotes/{quote(remote, 'remote name')}/images"
        query = {"filter": filter, "refresh": refresh}
        return await self.request("GET", path, query=query)

    async def images(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/1.0/images")

    async def image(self, ref: str) -> dict[str, Any]:
        return await self.request("GET", image_path(ref))

    async def delete_image(self, ref: str) -> None:
        await self.request("DELETE", image_path(ref))

    async def update_image_aliases(
        self, ref: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"add_aliases": list(add or ()), "remove_aliases": list(remove or ())}
        return await self.request("PATCH", image_path(ref), body)

    async def pull_image(self, image: str) -> dict[str, Any]:
        """Start downloading REMOTE:ALIAS: the operation (`success` when cached)."""
        return await self.request("POST", "/1.0/images/pull", {"image": image})

    async def publish(
        self,
        container: str,
        snapshot: str | None = None,
        aliases: list[str] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        body = {
            "container": container,
            "snapshot": snapshot,
            "aliases": list(aliases or ()),
            "description": description,
        }
        return await self.request("POST", "/1.0/images", body)

    async def build_template(self, name: str, refresh: bool = False) -> dict[str, Any]:
        """Start a template build: the operation (already `success` when cached).
        `refresh` builds afresh from the mirror (current packages), even when
        the template is up to date and its build is cached."""
        path = f"/1.0/templates/{quote(name, 'template name')}/build"
        return await self.request("POST", path, {"refresh": refresh})

    async def networks(self) -> list[Any] | None:
        """The daemon's networks, or None when this lxpyd manages none (404)."""
        try:
            return await self.request("GET", "/1.0/networks")
        except NotFound:
            return None

    async def containers(self, stats: bool = False) -> list[dict[str, Any]]:
        """Every container; with `stats`, the running ones' resource use."""
        return await self.request("GET", "/1.0/containers", query={"stats": stats})

    async def container(self, name: str) -> dict[str, Any]:
        return await self.request("GET", _ct(name))

    async def create_container(
        self,
        name: str,
        template: str | None,
        config: Mapping[str, object] | None = None,
        image: str | None = None,
    ) -> dict[str, Any]:
        """Create from `template`, or from `image` (REMOTE:ALIAS, an alias,
        a fingerprint) when `template` is None."""
        body: dict[str, object] = {"name": name, "config": dict(config or {})}
        body.update({"template": template} if image is None else {"image": image})
        return await self.request("POST", "/1.0/containers", body)

    async def update_config(
        self,
        name: str,
        set_: Mapping[str, object] | None = None,
        unset: list[str] | None = None,
    ) -> dict[str, Any]:
        """Set and unset config keys of `name`; lxpyd checks them (nothing
        changes when one is refused). The container as it is now."""
        body = {"set": dict(set_ or {}), "unset": list(unset or [])}
        return await self.request("PATCH", _ct(name) + "/config", body)

    async def delete_container(self, name: str, force: bool = False) -> None:
        await self.request("DELETE", _ct(name), query={"force": force})

    async def rename_container(self, name: str, new: str) -> dict[str, Any]:
        return await self.request("POST", _ct(name) + "/rename", {"name": new})

    async def _upgrade(self, method: str, path: str) -> AsyncResponse:
        """Ask for the framed stream (lxpy.api.streams) on `method path`.

        Raises:
            LxpyError: the error lxpyd answered instead of 101.
        """
        return await self._send(encode_request(method, path, upgrade=PROTOCOL), upgrade=True)

    async def _frames_until_end(
        self, resp: AsyncResponse, on_data: Callable[[bytes], None] | None = None
    ) -> dict[str, Any]:
        # Stdout frames to `on_data`; the exit frame's object is the answer,
        # an error frame's error is raised.
        decoder = FrameDecoder()
        while True:
            try:
                data = await resp._reader.read(1 << 20)
            except OSError as e:
                raise lost(self.socket_path, e.strerror or str(e)) from None
            if not data:
                raise lost(self.socket_path, "the transfer ended before its answer")
            for kind, payload in decoder.feed(data):
                if kind == STDOUT and on_data is not None:
                    on_data(payload)
                elif kind == ERROR:
                    raise from_json(parse_json(payload, "error"))
                elif kind == EXIT:
                    return parse_json(payload, "exit")

    async def export_container(
        self,
        name: str,
        on_data: Callable[[bytes], None],
        instance_only: bool = False,
        optimized: bool = False,
    ) -> dict[str, Any]:
        """The backup file of container `name`, a chunk at a time to
        `on_data` (docs/backup.md); lxpyd's summary."""
        path = EXPORT_PATH.format(name=quote(name))
        resp = await self._upgrade(
            "GET", path + query(instance_only=instance_only, optimized=optimized)
        )
        try:
            return await self._frames_until_end(resp, on_data)
        finally:
            await resp.aclose()

    async def import_container(
        self, chunks: AsyncIterator[bytes], name: str | None = None
    ) -> dict[str, Any]:
        """Make a container of the backup file given as `chunks`; the container."""
        resp = await self._upgrade("POST", IMPORT_PATH + query(name=name))
        try:
            try:
                async for chunk in chunks:
                    if chunk:
                        resp._writer.write(frame(STDIN, chunk))
                        await resp._writer.drain()
                resp._writer.write(frame(STDIN, b""))
                await resp._writer.drain()
            except OSError:
                pass  # lxpyd stopped reading: its answer says why
            return await self._frames_until_end(resp)
        finally:
            await resp.aclose()

    async def copy_container(
        self, source: str, dest: str, instance_only: bool = False
    ) -> dict[str, Any]:
        body = {"name": dest, "instance_only": instance_only}
        return await self.request("POST", _ct(source) + "/copy", body)

    async def start(
        self, name: str, wait: bool = False, wait_timeout: float | None = None
    ) -> dict[str, Any]:
        """Start `name`; with `wait`, answer once it is ready, else once init runs."""
        body = wait_fields(wait, wait_timeout)
        return await self.request("POST", _ct(name) + "/start", body)

    async def stop(self, name: str, grace: float = 30, force: bool = False) -> dict[str, Any]:
        """Stop `name`: init gets `grace` seconds to halt (none with force)."""
        body = {"timeout": grace, "force": force}
        return await self.request("POST", _ct(name) + "/stop", body)

    async def restart(
        self, name: str, grace: float = 30, wait: bool = False, wait_timeout: float | None = None
    ) -> dict[str, Any]:
        """Stop `name` (as stop() does) and start it again; `wait` as for start()."""
        body = {"timeout": grace, **wait_fields(wait, wait_timeout)}
        return await self.request("POST", _ct(name) + "/restart", body)

    async def freeze(self, name: str) -> dict[str, Any]:
        return await self.request("POST", _ct(name) + "/freeze", {})

    async def unfreeze(self, name: str) -> dict[str, Any]:
        return await self.request("POST", _ct(name) + "/unfreeze", {})

    async def console_log(self, name: str) -> str:
        """The console output kept since boot."""
        return await self.request("GET", _ct(name) + "/console/log", text=True)

    async def snapshots(self, name: str) -> list[dict[str, Any]]:
        return await self.request("GET", _ct(name) + "/snapshots")

    async def create_snapshot(self, name: str, snapshot: str | None = None) -> dict[str, Any]:
        body = {} if snapshot is None else {"name": snapshot}
        return await self.request("POST", _ct(name) + "/snapshots", body)

    async def restore_snapshot(
        self, name: str, snapshot: str, grace: float | None = None
    ) -> dict[str, Any]:
        """Restore a container to a snapshot; a running one is stopped (killed
        after `grace` s), restored and started again."""
        body = None if grace is None else {"timeout": grace}
        return await self.request("POST", _snap(name, snapshot) + "/restore", body)

    async def delete_snapshot(self, name: str, snapshot: str) -> None:
        await self.request("DELETE", _snap(name, snapshot))

    async def devices(self, name: str) -> list[dict[str, Any]]:
        return await self.request("GET", _ct(name) + "/devices")

    async def device(self, name: str, device: str) -> dict[str, Any]:
        return await self.request("GET", _dev(name, device))

    async def add_device(
        self, name: str, device: str, type_: str, config: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Add a device; a running container gets it at once."""
        body = {"name": device, "type": type_, "config": dict(config or {})}
        return await self.request("POST", _ct(name) + "/devices", body)

    async def remove_device(self, name: str, device: str) -> None:
        await self.request("DELETE", _dev(name, device))

    async def volumes(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/1.0/volumes")

    async def volume(self, name: str) -> dict[str, Any]:
        return await self.request("GET", _vol(name))

    async def create_volume(self, name: str) -> dict[str, Any]:
        return await self.request("POST", "/1.0/volumes", {"name": name})

    async def delete_volume(self, name: str) -> None:
        await self.request("DELETE", _vol(name))

    async def operation(self, op_id: str) -> dict[str, Any]:
        return await self.request("GET", _op(op_id))

    async def wait_operation(self, op_id: str, wait: float | None = None) -> dict[str, Any]:
        """The operation once it has ended, or after `wait` seconds."""
        query = None if wait is None else {"timeout": wait}
        return await self.request("GET", _op(op_id) + "/wait", query=query)

    async def operation_stream(self, op_id: str) -> EventStream:
        """`{"log": ...}`, `{"progress": ..., "stage": ...}`, then `{"operation": ...}`."""
        return await self.open_stream(_op(op_id) + "/stream")

    async def events(self, types: list[str] | None = None) -> EventStream:
        """The event stream, subscribed when this returns."""
        query = {"type": ",".join(types)} if types else None
        return await self.open_stream("/1.0/events", query)
