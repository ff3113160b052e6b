"""The host's systemd: scope units for containers, over its private bus.

On a host whose PID 1 is systemd, every process belongs to a unit, and a
process that lxpy.service leaves behind when it stops is one systemd warns
about ("Found left-over process") and may kill. So each container's
monitor asks systemd for a transient scope unit of its own, as
systemd-nspawn does for its machines: `lxpy-ROOTID-NAME.scope` under
`machine.slice`, with `Delegate=yes`, so the cgroup below it is lxpy's to
manage (the container's payload cgroup and the monitor's own leaf live
there; see lxpy.runtime.monitor).

The call goes to systemd's private socket (as `systemctl` does as root):
a peer-to-peer D-Bus connection that needs no bus daemon, which a minimal
Debian host may lack. Only the little of the D-Bus wire format that
StartTransientUnit needs is written here. Stdlib only: the monitor uses it.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from lxpy.errors import Busy, LxpyError

# For annotations only: typing costs the zygote, and so every monitor, memory.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PRIVATE_SOCKET = "/run/systemd/private"
SLICE = "machine.slice"
# Where the managed networks' dnsmasq scopes go (lxpy.daemon.dnsmasqd).
SYSTEM_SLICE = "system.slice"
# The packaged unit whose stop (at host shutdown) stops every container in
# order (debian/lxpy-containers.service): scopes stop after it.
SHUTDOWN_UNIT = "lxpy-containers.service"

_UINT64_MAX = (1 << 64) - 1
_METHOD_CALL, _METHOD_RETURN, _ERROR = 1, 2, 3
# Header field codes (the D-Bus specification's "Message Format").
_PATH, _INTERFACE, _MEMBER, _ERROR_NAME, _REPLY_SERIAL, _DESTINATION = 1, 2, 3, 4, 5, 6
_SIGNATURE = 8
_ALIGN = {"y": 1, "b": 4, "u": 4, "t": 8, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "v": 1}


def booted() -> bool:
    """Whether the host runs systemd as its service manager (sd_booted(3))."""
    return os.path.isdir("/run/systemd/system")


def available() -> bool:
    """Whether scopes can be asked for: systemd runs and its private socket is there."""
    return booted() and os.path.exists(PRIVATE_SOCKET)


def scope_unit(root_id: str, name: str) -> str:
    """The scope unit of container `name` of the daemon whose root has `root_id`."""
    return f"lxpy-{root_id}-{name}.scope"


def scope_cgroup(unit: str, slice_: str = SLICE) -> str:
    """Where scope `unit` (in `slice_`) has its cgroup, relative to a hierarchy's root."""
    return f"{slice_}/{unit}"


def describe(name: str) -> str:
    """The Description of container `name`'s scope."""
    return f"lxpy container {name}"


def start_scope(
    unit: str, pid: int, description: str, timeout: float = 10.0, slice_: str = SLICE
) -> None:
    """Have systemd make transient scope `unit` in `slice_` (delegated in
    machine.slice) holding process `pid`, and wait until `pid` is in its cgroup.

    Raises:
        Busy: when a unit of that name is active already.
        LxpyError: when systemd cannot be reached or refuses.
    """
    props = [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_)),
        # A container's cgroups below its scope are lxpy's to manage.
        ("Delegate", ("b", slice_ == SLICE)),
        ("PIDs", ("au", [pid])),
        # A scope whose container failed must not keep its name taken.
        ("CollectMode", ("s", "inactive-or-failed")),
        # Its container's limits are lxpy's; the scope adds none.
        ("TasksMax", ("t", _UINT64_MAX)),
        ("Before", ("as", [SHUTDOWN_UNIT])),
    ]
    deadline = time.monotonic() + timeout
    try:
        with _connect(timeout) as sock:
            _call(
                sock,
                "StartTransientUnit",
                "ssa(sv)a(sa(sv))",
                [unit, "fail", props, []],
            )
    except OSError as e:
        raise LxpyError(
            f"cannot ask systemd for scope {unit}: {e.strerror or e}",
            hint=f"is systemd answering on {PRIVATE_SOCKET}?",
        ) from None
    # The reply comes once the job is queued; systemd moves the process
    # when the job runs, a moment later.
    want = "/" + scope_cgroup(unit, slice_)
    while unit_cgroup(pid) != want:
        if time.monotonic() > deadline:
            raise LxpyError(f"systemd did not move process {pid} into scope {unit} in time")
        time.sleep(0.001)


def unit_cgroup(pid: int) -> str:
    """The cgroup that says which unit process `pid` is in ("" when none).

    Raises:
        OSError: `pid` does not exist.
    """
    # The "0::" line (cgroup2) or, on a hybrid host, systemd's own
    # name=systemd hierarchy: the one that says which unit a process is in.
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for prefix in ("0::", "1:name=systemd:"):
        for line in lines:
            if line.startswith(prefix):
                return line[len(prefix) :]
    return ""


def _connect(timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(PRIVATE_SOCKET)
        # SASL EXTERNAL: the kernel tells systemd our uid (SO_PEERCRED).
        uid = str(os.getuid()).encode().hex()
        sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
        line = _read_line(sock)
        if not line.startswith(b"OK "):
            raise OSError(0, f"systemd refused the authentication: {line!r}")
        sock.sendall(b"BEGIN\r\n")
    except BaseException:
        sock.close()
        raise
    return sock


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise OSError(0, "systemd closed the connection")
        buf += chunk
        if len(buf) > 512:
            raise OSError(0, "an over-long authentication line")
    return buf[:-2]


def _call(sock: socket.socket, member: str, signature: str, args: list[object]) -> None:
    """Call `member` of systemd's Manager interface and wait for its answer.

    Raises:
        Busy: UnitExists.
        LxpyError: any other D-Bus error, with systemd's message.
    """
    serial = 1
    body = bytearray()
    for t, value in zip(_split(signature), args, strict=True):
        _put(body, t, value)
    fields = [
        (_PATH, ("o", "/org/freedesktop/systemd1")),
        (_INTERFACE, ("s", "org.freedesktop.systemd1.Manager")),
        (_MEMBER, ("s", member)),
        (_DESTINATION, ("s", "org.freedesktop.systemd1")),
        (_SIGNATURE, ("g", signature)),
    ]
    msg = bytearray(b"l" + bytes([_METHOD_CALL, 0, 1]) + struct.pack("<II", len(body), serial))
    _put(msg, "a(yv)", fields)
    _pad(msg, 8)
    sock.sendall(bytes(msg + body))
    while True:
        kind, header, payload = _receive(sock)
        if header.get(_REPLY_SERIAL) != serial:
            continue  # a signal or anything else not ours
        if kind == _METHOD_RETURN:
            return
        if kind == _ERROR:
            name = str(header.get(_ERROR_NAME, "?"))
            text = ""
            if str(header.get(_SIGNATURE, "")).startswith("s"):
                text, _ = _get(payload, 0, "s")
            if name.endswith(".UnitExists"):
                raise Busy(str(text or name), hint="a unit of that name is active already")
            raise LxpyError(f"systemd: {text or name}")


def _receive(sock: socket.socket) -> tuple[int, dict[int, object], bytes]:
    fixed = _recv_exact(sock, 16)
    if fixed[:1] != b"l":
        raise OSError(0, "systemd answered in big-endian, which this client does not read")
    kind = fixed[1]
    body_len, _serial, fields_len = struct.unpack_from("<III", fixed, 4)
    if body_len > 1 << 24 or fields_len > 1 << 16:
        raise OSError(0, "an over-long message from systemd")
    rest = _recv_exact(sock, fields_len + (-(16 + fields_len) % 8) + body_len)
    raw = fixed + rest
    header_fields, _ = _get(raw, 12, "a(yv)")
    header = {code: value for code, (_sig, value) in header_fields}
    return kind, header, raw[len(raw) - body_len :]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError(0, "systemd closed the connection")
        buf += chunk
    return bytes(buf)


# -- the wire format ---------------------------------------------------------


def _end_of_type(sig: str, i: int) -> int:
    # The index just past the single complete type that starts at sig[i].
    if sig[i] == "a":
        return _end_of_type(sig, i + 1)
    if sig[i] == "(":
        i += 1
        while sig[i] != ")":
            i = _end_of_type(sig, i)
        return i + 1
    return i + 1


def _split(sig: str) -> list[str]:
    out, i = [], 0
    while i < len(sig):
        j = _end_of_type(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _pad(buf: bytearray, n: int) -> None:
    buf.extend(b"\0" * (-len(buf) % n))


def _put(buf: bytearray, t: str, value: Any) -> None:
    # Offsets are from the message's start: the body starts 8-aligned, so
    # aligning within it is the same.
    c = t[0]
    _pad(buf, _ALIGN[c])
    if c == "y":
        buf.append(int(value))
    elif c in "bu":
        buf += struct.pack("<I", int(value))
    elif c == "t":
        buf += struct.pack("<Q", int(value))
    elif c in "so":
        data = str(value).encode()
        buf += struct.pack("<I", len(data)) + data + b"\0"
    elif c == "g":
        data = str(value).encode()
        buf += bytes([len(data)]) + data + b"\0"
    elif c == "v":
        sig, inner = value
        _put(buf, "g", sig)
        _put(buf, sig, inner)
    elif c == "a":
        at = len(buf)
        buf += b"\0\0\0\0"
        _pad(buf, _ALIGN[t[1]])
        start = len(buf)
        for item in value:
            _put(buf, t[1:], item)
        struct.pack_into("<I", buf, at, len(buf) - start)
    elif c == "(":
        for part, item in zip(_split(t[1:-1]), value, strict=True):
            _put(buf, part, item)
    else:
        raise ValueError(f"D-Bus type {c!r} is not supported here")


def _get(data: bytes, off: int, t: str) -> tuple[Any, int]:
    c = t[0]
    off += -off % _ALIGN[c]
    if c == "y":
        return data[off], off + 1
    if c in "bu":
        return struct.unpack_from("<I", data, off)[0], off + 4
    if c == "t":
        return struct.unpack_from("<Q", data, off)[0], off + 8
    if c in "so":
        (n,) = struct.unpack_from("<I", data, off)
        return data[off + 4 : off + 4 + n].decode(errors="replace"), off + 5 + n
    if c == "g":
        n = data[off]
        return data[off + 1 : off + 1 + n].decode(), off + 2 + n
    if c == "v":
        sig, off = _get(data, off, "g")
        value, off = _get(data, off, str(sig))
        return (sig, value), off
    if c == "a":
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        off += -off % _ALIGN[t[1]]
        end, items = off + n, []
        while off < end:
            item, off = _get(data, off, t[1:])
            items.append(item)
        return items, off
    if c == "(":
        parts = []
        for part in _split(t[1:-1]):
            item, off = _get(data, off, part)
            parts.append(item)
        return tuple(parts), off
    raise ValueError(f"D-Bus type {c!r} is not supported here")
