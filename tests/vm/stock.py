"""What the tests on a stock Debian 12 guest share: lxpy's package put in
and driven there as an admin would, over ssh.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lxpy.model.network import root_id
from tests.vm.guest import Guest

ROOT_ID = root_id("/var/lib/lxpy")
GUEST_CACHE = "/var/cache/lxpy-build"
SETTINGS = f'build_cache = "{GUEST_CACHE}"\npool_size = "5GiB"\n'
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold"


def prepare(g: Guest) -> None:
    """The guest made ready for the package: a persistent journal, veths
    left alone by systemd-networkd, and lxpyd's settings in place (the
    service starts on install)."""
    g.run("mkdir -p /var/log/journal && systemctl restart systemd-journald")
    # The guest's systemd-networkd matches every Ethernet link, and veths
    # are Ethernet links: it would take each container's host end off the
    # bridge. As on any such host, the admin narrows it to the real NICs.
    g.run(
        "sed -i 's/^Type=ether$/Name=en*/' /etc/systemd/network/20-wired.network"
        " && networkctl reload"
    )
    g.run(f"mkdir -p {GUEST_CACHE} /etc/lxpy")
    g.run(f"printf '{SETTINGS}' > /etc/lxpy/lxpyd.toml")


def install(g: Guest, deb: Path, *options: str) -> None:
    """`apt-get install` of the package file `deb`, copied into the guest."""
    g.put(deb, f"/root/{deb.name}")
    g.run(f"{APT} install {' '.join(options)} /root/{deb.name}", timeout=600)


def lxpy(g: Guest, args: str, timeout: float = 300) -> str:
    return g.run(f"lxpy {args}", timeout=timeout).stdout


def info(g: Guest, name: str) -> dict[str, Any]:
    return json.loads(lxpy(g, f"info {name} --format json"))


def wait(g: Guest, cond: str, timeout: float, what: str) -> None:
    """Until the shell condition `cond` holds in the guest."""
    # A deadline, not a count: each try of `cond` takes its own time here.
    loop = f"end=$(($(date +%s) + {int(timeout)})); while [ $(date +%s) -lt $end ]; do "
    res = g.run(
        loop + f"if {cond}; then exit 0; fi; sleep 0.2; done; exit 1",
        check=False,
        timeout=timeout + 30,
    )
    assert res.returncode == 0, f"timed out after {timeout}s waiting for {what}"


def wait_running(g: Guest, names: tuple[str, ...], timeout: float = 120) -> dict[str, int]:
    """Until lxpy answers and lists every one of `names` RUNNING; their init pids."""
    wait(g, "lxpy list >/dev/null 2>&1", timeout, "lxpyd to answer")
    deadline = time.monotonic() + timeout
    while True:
        listed = {c["name"]: c for c in json.loads(lxpy(g, "list --format json"))}
        if all(listed.get(n, {}).get("state") == "RUNNING" for n in names):
            return {n: info(g, n)["init_pid"] for n in names}
        assert time.monotonic() < deadline, f"not all RUNNING: {listed}"
        time.sleep(1)


def cgroup_of(g: Guest, pid: int) -> str:
    return g.run(f"cat /proc/{pid}/cgroup").stdout.strip()


def parent_of(g: Guest, pid: int) -> int:
    """The parent of `pid`: for a container's init, its monitor."""
    return int(g.run(f"ps -o ppid= -p {pid}").stdout)


def scope(name: str) -> str:
    return f"lxpy-{ROOT_ID}-{name}.scope"


def payload(name: str) -> str:
    return f"/sys/fs/cgroup/machine.slice/{scope(name)}/lxpy.payload.{name}"


def journal_since(g: Guest, cursor: str, unit: str = "lxpy") -> str:
    return g.run(f"journalctl -q --no-pager -u {unit} --after-cursor='{cursor}'").stdout


def cursor(g: Guest) -> str:
    out = g.run("journalctl -q -n 0 --show-cursor --no-pager").stdout
    return out.strip().removeprefix("-- cursor: ")
