"""lxpy's nftables table: NAT and forwarding for its managed networks.

Each daemon root owns one table, `inet lxpy-<root id>`, holding the rules of
all its networks. The table is always replaced whole, in one nft
transaction (declare, delete, re-add), so a reader never sees half of it and
no other table, chain or the host's policy is ever touched. Scripts run in
lxpyd's process through libnftables when it can be loaded (`run_script`).

The ctypes binding of libnftables lives here, beside its one user, and not
in lxpy.kernel.syscalls: that module binds libc's syscalls only.
"""

from __future__ import annotations

import ctypes
import subprocess
from collections.abc import Iterable

from lxpy.errors import LxpyError, Unsupported
from lxpy.model.network import Network

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def table_name(root_id: str) -> str:
    return f"lxpy-{root_id}"


def render(table: str, networks: Iterable[Network]) -> str:
    """The nft script that makes `table` hold exactly the rules of `networks`
    (or removes the table when there are none)."""
    nets = sorted(networks, key=lambda n: n.name)
    # Declaring first makes the delete valid when the table does not exist.
    lines = [f"table inet {table} {{}}", f"delete table inet {table}"]
    if not nets:
        return "\n".join(lines) + "\n"
    lines.append(f"table inet {table} {{")
    lines.append("  chain forward {")
    lines.append("    type filter hook forward priority filter; policy accept;")
    for n in nets:
        lines.append(f'    iifname "{n.name}" accept')
        lines.append(f'    oifname "{n.name}" ct state established,related accept')
    lines.append("  }")
    lines.append("  chain input {")
    lines.append("    type filter hook input priority filter; policy accept;")
    for n in nets:
        # DHCP and DNS from the containers to the bridge's dnsmasq.
        lines.append(f'    iifname "{n.name}" udp dport {{ 53, 67 }} accept')
        lines.append(f'    iifname "{n.name}" tcp dport 53 accept')
    lines.append("  }")
    lines.append("  chain postrouting {")
    lines.append("    type nat hook postrouting priority srcnat; policy accept;")
    for n in nets:
        if n.nat:
            lines.append(
                f'    ip saddr {n.subnet} ip daddr != {n.subnet} oifname != "{n.name}" masquerade'
            )
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(table: str, networks: Iterable[Network], nft: str = "nft") -> None:
    """Replace `table` with the rules of `networks` in one transaction.

    Raises:
        Unsupported: no nft binary.
        LxpyError: nft refused the script (its message included).
    """
    run_script(
        render(table, networks),
        f"lxpy's table {table}",
        "check that the kernel has nf_tables with nat (`nft list tables`)",
        nft,
    )


def run_script(script: str, what: str, hint: str, nft: str = "nft") -> None:
    """Run an nft script (one transaction: all of it or nothing): in this
    process through libnftables where it can be loaded, else by `nft`.

    Raises:
        Unsupported: no nft binary (nor libnftables).
        LxpyError: nft refused the script: "nft refused `what`: its message".
    """
    lib = _libnftables()
    if lib is not None:
        error = _run_in_process(lib, script)
    else:
        error = _run_nft(nft, script)
    if error is not None:
        raise LxpyError(f"nft refused {what}: {error}", hint=hint)


def _run_nft(nft: str, script: str) -> str | None:
    try:
        res = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise Unsupported(
            "nft is not installed", hint="install nftables (`apt install nftables`)"
        ) from None
    return None if res.returncode == 0 else res.stderr.strip()


# libnftables (what `nft` itself runs on), loaded once: a script then costs
# about 1 ms instead of about 7 ms for an nft process, which every start
# and stop of a container on a network pays for its port's rules.
_LIB: list[ctypes.CDLL | None] = []


def _libnftables() -> ctypes.CDLL | None:
    if not _LIB:
        try:
            lib: ctypes.CDLL | None = ctypes.CDLL("libnftables.so.1")
        except OSError:
            lib = None
        if lib is not None:
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            for fn in (lib.nft_ctx_free, lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
                fn.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _LIB.append(lib)
    return _LIB[0]


def _run_in_process(lib: ctypes.CDLL, script: str) -> str | None:
    # None when the script ran; else libnftables' message. A context per
    # script: they are not shared between threads.
    ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if not ctx:
        return "libnftables could not make a context"
    try:
        # Messages are kept for us rather than written to lxpyd's stderr.
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, script.encode()) == 0:
            return None
        error = lib.nft_ctx_get_error_buffer(ctx) or b""
        return error.decode(errors="replace").strip() or "failed"
    finally:
        lib.nft_ctx_free(ctx)


def enable_ip_forward() -> None:
    """Turn on IPv4 forwarding (needed for NAT). It is left on afterwards:
    other software on the host may rely on it by then."""
    with open(IP_FORWARD) as f:
        if f.read().strip() == "1":
            return
    with open(IP_FORWARD, "w") as f:
        f.write("1\n")
