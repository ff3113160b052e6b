"""The D-Bus wire format of lxpy.kernel.systemd, against a fake systemd.

The real systemd is exercised by the VM tests (tests/vm); here the encoding
is checked byte for byte and a call is answered by a peer that decodes it.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest

from lxpy.errors import Busy, LxpyError
from lxpy.kernel import systemd


def test_an_array_of_variants_is_laid_out_as_the_specification_says() -> None:
    buf = bytearray()
    systemd._put(buf, "a(sv)", [("A", ("u", 7))])
    # Length 16, padding to the struct's 8, "A" (len 1 + NUL), variant
    # signature "u", padding to 4, the value.
    assert bytes(buf) == (
        b"\x10\0\0\0" + b"\0" * 4 + b"\x01\0\0\0A\0" + b"\x01u\0" + b"\0" * 3 + b"\x07\0\0\0"
    )
    assert systemd._get(bytes(buf), 0, "a(sv)") == ([("A", ("u", 7))], len(buf))


def test_signatures_split_into_complete_types() -> None:
    assert systemd._split("ssa(sv)a(sa(sv))") == ["s", "s", "a(sv)", "a(sa(sv))"]


def _message(
    kind: int, serial: int, fields: list[tuple[int, tuple[str, object]]], body: bytes
) -> bytes:
    msg = bytearray(b"l" + bytes([kind, 0, 1]) + struct.pack("<II", len(body), serial))
    systemd._put(msg, "a(yv)", fields)
    systemd._pad(msg, 8)
    return bytes(msg + body)


def _serve(sock: socket.socket, answer: str, seen: list[object]) -> None:
    kind, header, body = systemd._receive(sock)
    args = []
    off = 0
    for t in systemd._split(str(header[systemd._SIGNATURE])):
        # The body is parsed as if it began 8-aligned: it does.
        value, off = systemd._get(body, off, t)
        args.append(value)
    seen.extend([kind, header, args])
    signal = _message(4, 9, [(systemd._MEMBER, ("s", "JobNew"))], b"")
    sock.sendall(signal)  # not the answer: the client must read past it
    reply = bytearray()
    if answer == "ok":
        systemd._put(reply, "o", "/org/freedesktop/systemd1/job/1")
        fields = [(systemd._REPLY_SERIAL, ("u", 1)), (systemd._SIGNATURE, ("g", "o"))]
        sock.sendall(_message(2, 10, fields, bytes(reply)))
    else:
        systemd._put(reply, "s", "Unit lxpy-x.scope already exists.")
        fields = [
            (systemd._REPLY_SERIAL, ("u", 1)),
            (systemd._ERROR_NAME, ("s", answer)),
            (systemd._SIGNATURE, ("g", "s")),
        ]
        sock.sendall(_message(3, 10, fields, bytes(reply)))


def _call(answer: str) -> list[Any]:
    ours, theirs = socket.socketpair()
    seen: list[object] = []
    t = threading.Thread(target=_serve, args=(theirs, answer, seen))
    t.start()
    try:
        props = [("Delegate", ("b", True)), ("PIDs", ("au", [42]))]
        systemd._call(
            ours, "StartTransientUnit", "ssa(sv)a(sa(sv))", ["u.scope", "fail", props, []]
        )
    finally:
        t.join(5)
        ours.close()
        theirs.close()
    return seen


def test_a_call_is_decoded_by_the_peer_as_sent() -> None:
    kind, header, args = _call("ok")
    assert kind == 1
    assert header[systemd._MEMBER] == "StartTransientUnit"
    assert header[systemd._PATH] == "/org/freedesktop/systemd1"
    assert args == ["u.scope", "fail", [("Delegate", ("b", 1)), ("PIDs", ("au", [42]))], []]


def test_errors_come_back_as_lxpy_errors() -> None:
    with pytest.raises(Busy, match="already exists"):
        _call("org.freedesktop.systemd1.UnitExists")
    with pytest.raises(LxpyError, match="systemd: Unit lxpy-x.scope"):
        _call("org.freedesktop.DBus.Error.AccessDenied")
