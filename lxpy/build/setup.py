"""Post-build setup steps ([setup] in a definition), applied to every kind.

All functions here block (plain file work): the builder runs `apply_setup`
in a worker thread. Every path is read and written through
lxpy.kernel.inroot: an imported tarball may hold FIFOs, device nodes,
symlinks out of the rootfs or huge files where these steps look.

Steps adapt to the rootfs's init: a systemd rootfs gets
systemd-networkd, a busybox rootfs gets udhcpc from its boot scripts, and a
rootfs with another init keeps its own network configuration.
"""

from __future__ import annotations

import os
import re
import stat
from enum import StrEnum
from pathlib import Path

from lxpy.build import busybox, systemd_units
from lxpy.errors import InvalidArgument
from lxpy.kernel.inroot import Rootfs
from lxpy.model.template import TemplateDef

NETWORK_FILE = "etc/systemd/network/80-lxpy-eth0.network"
NETWORKD_CONFIG = """\
# DHCP on eth0, the interface lxpy gives every container.
[Match]
Name=eth0

[Network]
# lxpy's networks are IPv4. Without IPv6 link-local addressing and router
# solicitations the link is "configured" as soon as the DHCPv4 lease is in,
# so systemd-networkd-wait-online (network-online.target) is done at once
# instead of waiting about a second for IPv6 duplicate address detection.
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
# The lease follows the NIC's MAC, which lxpy keeps stable and unique per
# container (static leases match on it), not a DUID made from machine-id,
# which a copied container would share with its original.
ClientIdentifier=mac
# lxpy sets the hostname; taking it from DHCP would only start hostnamed at
# boot to be refused.
UseHostname=no
# "search lxpy": other containers resolve as NAME as well as NAME.lxpy.
UseDomains=yes
"""
STUB_RESOLV = "../run/systemd/resolve/stub-resolv.conf"

UDHCPC_SCRIPT = "usr/share/udhcpc/default.script"
UDHCPC_SCRIPT_TEXT = """\
#!/bin/sh
# udhcpc event handler: $1 is the event, the lease comes in the environment
# (interface, ip, subnet, broadcast, router, dns, domain).
PATH=/sbin:/bin:/usr/sbin:/usr/bin
RESOLV_CONF=/etc/resolv.conf

case "$1" in
deconfig)
	ifconfig "$interface" 0.0.0.0 up
	;;
leasefail|nak)
	echo "udhcpc: $1 on $interface" >&2
	;;
bound|renew)
	set -- "$interface" "$ip"
	[ -n "$subnet" ] && set -- "$@" netmask "$subnet"
	[ -n "$broadcast" ] && set -- "$@" broadcast "$broadcast"
	ifconfig "$@" up
	if [ -n "$router" ]; then
		while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
		metric=0
		for r in $router; do
			route add default gw "$r" dev "$interface" metric "$metric"
			metric=$((metric + 1))
		done
	fi
	tmp="$RESOLV_CONF.udhcpc"
	: > "$tmp"
	[ -n "$domain" ] && echo "search $domain" >> "$tmp"
	for s in $dns; do
		echo "nameserver $s" >> "$tmp"
	done
	mv -f "$tmp" "$RESOLV_CONF"
	;;
esac
exit 0
"""

NETWORK_INIT = "etc/init.d/S40network"
NETWORK_INIT_TEXT = """\
#!/bin/sh
# DHCP on eth0 (setup.network = "dhcp"). udhcpc stays in the background to
# renew the lease; /usr/share/udhcpc/default.script applies it. A container
# without eth0 (no network) boots without it.
PIDFILE=/run/udhcpc.eth0.pid
case "$1" in
start)
	ip link show eth0 >/dev/null 2>&1 || exit 0
	udhcpc -i eth0 -b -t 5 -T 1 -p "$PIDFILE" -s /usr/share/udhcpc/default.script
	;;
stop)
	[ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null
	;;
esac
exit 0
"""

_TZ = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
HOST_ZONEINFO = Path("/usr/share/zoneinfo")


class Flavour(StrEnum):
    SYSTEMD = "systemd"
    BUSYBOX = "busybox"
    OTHER = "other"


def init_flavour(root: Rootfs, init: str) -> Flavour:
    """Which init the rootfs runs, from what `init` resolves to inside it."""
    if not root.is_file(init):
        return Flavour.OTHER
    name = os.path.basename(root.realpath(init) or "")
    if name == "systemd":
        return Flavour.SYSTEMD
    if name == "busybox":
        return Flavour.BUSYBOX
    return Flavour.OTHER


def set_hostname(root: Rootfs, hostname: str) -> None:
    """A placeholder /etc/hostname and a matching /etc/hosts; the runtime
    writes the container's real name at start."""
    root.write("etc/hostname", hostname + "\n")
    root.write(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n",
    )


def setup_network_systemd(root: Rootfs, network: str) -> list[str]:
    notes = []
    if network == "dhcp":
        root.write(NETWORK_FILE, NETWORKD_CONFIG, make_parents=True)
        systemd_units.enable_unit(root, "systemd-networkd.service")
        notes.append("network: systemd-networkd, DHCP on eth0")
    elif root.remove(NETWORK_FILE):
        notes.append("network: removed lxpy's networkd config (network = none)")
    # The bootstrap tools copy the host's resolv.conf in; a template must
    # not carry it. With systemd-resolved, point at its stub (networkd hands
    # it the DHCP DNS servers); without it nothing would keep the file
    # current, so leave a note instead of stale servers.
    if systemd_units.has_unit(root, "systemd-resolved.service"):
        systemd_units.enable_unit(root, "systemd-resolved.service")
        root.symlink("etc/resolv.conf", STUB_RESOLV)
        notes.append("resolver: systemd-resolved stub")
    else:
        root.write("etc/resolv.conf", "# no resolver: add systemd-resolved to packages\n")
        notes.append("resolver: none (systemd-resolved is not installed)")
    return notes


def setup_network_busybox(root: Rootfs, network: str) -> list[str]:
    if network == "dhcp":
        root.write(UDHCPC_SCRIPT, UDHCPC_SCRIPT_TEXT, 0o755, make_parents=True)
        root.write(NETWORK_INIT, NETWORK_INIT_TEXT, 0o755, make_parents=True)
        return ["network: udhcpc on eth0 from /etc/init.d/S40network"]
    root.remove(NETWORK_INIT)
    return ["network: none"]


def setup_console_systemd(root: Rootfs, getty: bool) -> list[str]:
    # systemd's getty generator starts console-getty.service by itself when
    # it runs in a container (container= set, /dev/console a pty): the
    # template only has to make sure nothing masks it.
    notes = []
    if getty:
        if systemd_units.unmask_unit(root, "console-getty.service"):
            notes.append("console: unmasked console-getty.service")
    else:
        systemd_units.mask_unit(root, "console-getty.service")
        notes.append("console: masked console-getty.service")
    for unit in systemd_units.CONTAINER_MASKED_UNITS:
        systemd_units.mask_unit(root, unit)
        notes.append(f"masked {unit} (not for containers)")
    return notes


def setup_console_busybox(root: Rootfs, getty: bool) -> list[str]:
    lines = (root.read_text("etc/inittab") or "").splitlines(keepends=True)

    def is_console_getty(line: str) -> bool:
        return "getty" in line and "console" in line and not line.lstrip().startswith("#")

    has = any(is_console_getty(line) for line in lines)
    if getty and not has:
        lines.append(busybox.GETTY_LINE)
    elif not getty:
        lines = ["#" + line if is_console_getty(line) else line for line in lines]
    root.write("etc/inittab", "".join(lines))
    return ["console: getty on /dev/console" if getty else "console: no getty"]


def set_root_password(root: Rootfs, password: str) -> None:
    """'locked' gives root the password field '*' (no password matches);
    anything else is taken as a crypt(3) hash.

    Raises:
        InvalidArgument: the hash holds ':' or a line break.
    """
    if password == "locked":
        field = "*"
    else:
        if ":" in password or "\n" in password:
            raise InvalidArgument(
                "setup.root_password: a crypt(3) hash cannot contain ':' or a line break",
                hint='use "locked", or a hash made with `openssl passwd -6`',
            )
        field = password
    # passwd: make root's field point at shadow ("x"), so an empty or
    # inherited password in /etc/passwd cannot bypass the lock.
    passwd = root.read_text("etc/passwd")
    if passwd is not None:
        out = []
        for line in passwd.splitlines():
            parts = line.split(":")
            if parts[0] == "root" and len(parts) >= 2:
                parts[1] = "x"
            out.append(":".join(parts))
        root.write("etc/passwd", "\n".join(out) + "\n")
    lines = (root.read_text("etc/shadow") or "").splitlines()
    for i, line in enumerate(lines):
        parts = line.split(":")
        if parts[0] == "root" and len(parts) >= 2:
            parts[1] = field
            lines[i] = ":".join(parts)
            break
    else:
        lines.insert(0, f"root:{field}::0:99999:7:::")
    root.write("etc/shadow", "\n".join(lines) + "\n", 0o600)


def set_timezone(root: Rootfs, tz: str) -> str:
    """/etc/localtime and /etc/timezone. A rootfs with tzdata gets a symlink;
    one without (busybox, minbase) gets a copy of the host's zone file.

    Raises:
        InvalidArgument: the name is malformed or no zone file exists.
    """
    if not _TZ.fullmatch(tz):
        raise InvalidArgument(f"setup.timezone: invalid timezone name {tz!r}", hint="e.g. Etc/UTC")
    inside = f"usr/share/zoneinfo/{tz}"
    if root.is_file(inside):
        root.symlink("etc/localtime", "/" + inside)
        how = "linked"
    elif (HOST_ZONEINFO / tz).is_file():
        # A new file, not the old one's mode: a zone file is world-readable.
        root.remove("etc/localtime")
        root.write("etc/localtime", (HOST_ZONEINFO / tz).read_bytes(), 0o644)
        how = "copied from the host"
    elif tz in ("UTC", "Etc/UTC"):
        # No /etc/localtime means UTC to the C library.
        root.remove("etc/localtime")
        how = "UTC by default"
    else:
        raise InvalidArgument(
            f"setup.timezone: unknown timezone {tz!r}",
            hint="use a name from /usr/share/zoneinfo, e.g. Europe/Berlin",
        )
    root.write("etc/timezone", tz + "\n")
    return f"timezone: {tz} ({how})"


def clear_machine_id(root: Rootfs) -> None:
    """Empty /etc/machine-id so each container gets its own at first boot
    (systemd fills an empty one); the dbus copy becomes a link to it."""
    if not root.is_dir("etc"):
        return
    # Replaced whatever it was; a new file, so mode 0444 whatever the old had.
    root.remove("etc/machine-id")
    root.write("etc/machine-id", "", 0o444)
    dbus_id = "var/lib/dbus/machine-id"
    entry = root.stat(dbus_id, follow=False)
    if entry is not None and stat.S_ISREG(entry.st_mode):
        root.symlink(dbus_id, "/etc/machine-id")


def apply_setup(defn: TemplateDef, path: Path) -> list[str]:
    """Apply the definition's [setup] to the built rootfs at `root` (blocking).

    Returns a line per step for the build log.

    Raises:
        InvalidArgument: a setup value that cannot be applied (timezone, hash).
        RootfsError: a file the steps read or replace is something they
            cannot use (a FIFO, a device node or a directory where a file
            should be, a file past the size they read).
    """
    hint = "fix the rootfs the definition's source gives (an imported tarball?)"
    with Rootfs(path, f"template {defn.name!r}", hint=hint) as root:
        return _apply(defn, root)


def _apply(defn: TemplateDef, root: Rootfs) -> list[str]:
    st = defn.setup
    flavour = init_flavour(root, defn.init)
    notes = [f"init {defn.init}: {flavour}"]
    root.makedirs("etc")
    set_hostname(root, defn.name)
    if flavour is Flavour.SYSTEMD:
        notes += setup_network_systemd(root, st.network)
        notes += setup_console_systemd(root, st.console_getty)
    elif flavour is Flavour.BUSYBOX:
        notes += setup_network_busybox(root, st.network)
        notes += setup_console_busybox(root, st.console_getty)
    else:
        notes.append("network and console: left as the rootfs has them (init is not known)")
    set_root_password(root, st.root_password)
    notes.append("root password: " + ("locked" if st.root_password == "locked" else "set"))
    notes.append(set_timezone(root, st.timezone))
    clear_machine_id(root)
    return notes
