"""Asyncio client of lxpyd's HTTP/JSON API (docs/api.md) for the TUI.

The same wire as lxpy.api.client (one connection per request, `Connection:
close`, bodies framed by Content-Length, chunked coding or the end of the
connection) on asyncio streams, so the Textual app never blocks its loop.
Its API methods come from lxpy.api.calls, as the sync client's do (the same
names and parameters; here each answers a coroutine); the request encoding,
answer parsing, socket resolution and hints come from the sync client, so
both clients name paths and failures the same way. This module is the
transport only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from lxpy.api.calls import Call, Calls, export_request, import_request
from lxpy.api.client import (
    LineDecoder,
    body_length,
    decode_json,
    encode_request,
    lost,
    parse_chunk_size,
    parse_header_line,
    parse_status_line,
    resolve_socket,
    response_error,
    timed_out,
    unreachable,
)
from lxpy.api.streams import PROTOCOL, STDIN, frame
from lxpy.api.transfer import Receiver, upgrade_target
from lxpy.errors import LxpyError

if TYPE_CHECKING:
    from lxpy.api.calls import Object

T = TypeVar("T")

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

    async def __aiter__(self) -> AsyncIterator[Object]:
        lines = LineDecoder(self._where)
        async for chunk in self._resp.chunks():
            for obj in lines.feed(chunk):
                yield obj
        for obj in lines.end():
            yield obj

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClient(Calls):
    """A connection-per-request asyncio client of lxpyd. Its API methods
    come from lxpy.api.calls.Calls; here each answers a coroutine.

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

    async def _run(self, call: Call[T]) -> T:
        resp = await self.open(call.method, call.path, call.body, call.query)
        try:
            if resp.status >= 400:
                raise await resp.error()
            # The call's T says what its answer is: text or JSON.
            if call.text:
                answer: Any = (await resp.read()).decode("utf-8", "replace")
            else:
                answer = await resp.json()
            return answer
        finally:
            await resp.aclose()

    async def run(self, call: Call[T]) -> T:
        """Send `call` and read its answer (JSON, or text for a text call).

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached or does not
                answer within the client's timeout.
        """
        if self.timeout is None:
            return await self._run(call)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._run(call)
        except TimeoutError:
            raise timed_out(self.socket_path, self.timeout) from None

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
    ) -> Any:
        """One call the API methods do not name: the parsed JSON answer.

        Args:
            method: HTTP method.
            path: absolute path under /1.0 (segments already quoted).
            body: JSON-able request body, or None.
            query: query parameters; True is sent as 1, None/False are left out.

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached or does not
                answer within the client's timeout.
        """
        return await self.run(Call(method, path, body, query))

    async def stream(self, call: Call[Object]) -> EventStream:
        """Open the NDJSON stream `call` names; it is subscribed when this
        returns. The client's timeout bounds only the wait for its head.

        Raises:
            LxpyError: for an error answer.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.open(call.method, call.path, call.body, call.query)
        except TimeoutError:
            raise timed_out(self.socket_path, self.timeout) from None
        if resp.status >= 400:
            try:
                raise await resp.error()
            finally:
                await resp.aclose()
        return EventStream(resp, self.socket_path)

    # -- the backup stream (docs/backup.md) ---------------------------------

    async def _upgrade(self, call: Call[Object]) -> AsyncResponse:
        """Ask for the framed stream (lxpy.api.streams) on `call`.

        Raises:
            LxpyError: the error lxpyd answered instead of 101.
        """
        data = encode_request(call.method, upgrade_target(call), upgrade=PROTOCOL)
        return await self._send(data, upgrade=True)

    async def _answer(self, resp: AsyncResponse, receiver: Receiver, ended: str) -> Object:
        # Read frames until the exit frame's answer (an error frame's
        # error is raised); `ended` says what an early end means, with
        # the bytes received as {moved}.
        while True:
            try:
                data = await resp._reader.read(1 << 20)
            except OSError as e:
                raise lost(self.socket_path, e.strerror or str(e)) from None
            if not data:
                raise lost(self.socket_path, ended.format(moved=receiver.moved))
            if (answer := receiver.feed(data)) is not None:
                return answer

    async def export_container(
        self,
        name: str,
        write: Callable[[bytes], object],
        instance_only: bool = False,
        optimized: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Object:
        """As Client.export_container: the backup file of container `name` to
        `write`, lxpyd's summary."""
        resp = await self._upgrade(export_request(name, instance_only, optimized))
        receiver = Receiver(write, progress)
        try:
            return await self._answer(resp, receiver, "the export ended after {moved} bytes")
        finally:
            await resp.aclose()

    async def import_container(
        self,
        chunks: AsyncIterable[bytes],
        name: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Object:
        """As Client.import_container, with `chunks` an async iterable: the
        container lxpyd made of them."""
        resp = await self._upgrade(import_request(name))
        moved = 0
        try:
            try:
                async for chunk in chunks:
                    if chunk:
                        resp._writer.write(frame(STDIN, chunk))
                        await resp._writer.drain()
                        moved += len(chunk)
                        if progress is not None:
                            progress(moved)
                resp._writer.write(frame(STDIN, b""))
                await resp._writer.drain()
            except OSError:
                pass  # lxpyd stopped reading: its answer says why
            return await self._answer(resp, Receiver(), "no answer to the import")
        finally:
            await resp.aclose()
