"""A container's user and network namespaces made in one helper, directly
and through the zygote's `namespaces` command: maps, ownership, lo up, and
nothing left bound on failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.errors import LxpyError
from lxpy.kernel import idranges, namespaces
from lxpy.runtime.zygote import spawn_request, start_zygote
from tests.conftest import owns

pytestmark = pytest.mark.integration

MAP = idranges.IdMap(3_100_000, 3_200_000, 65536)


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    user, net = str(tmp_path / "user"), str(tmp_path / "net")
    yield user, net
    namespaces.unpin_ns(user)
    namespaces.unpin_ns(net)


def _bound(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _lo_flags(netns: str) -> str:
    res = subprocess.run(
        ["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return res.stdout


def _check_pinned(user: str, net: str) -> None:
    ufd = os.open(user, os.O_RDONLY | os.O_CLOEXEC)
    nfd = os.open(net, os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert owns(ufd, nfd)
    finally:
        os.close(ufd)
        os.close(nfd)
    res = subprocess.run(
        [
            "nsenter",
            f"--user={user}",
            "cat",
            "/proc/self/uid_map",
            "/proc/self/gid_map",
            "/proc/self/setgroups",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert res.stdout.split() == [
        "0",
        str(MAP.uid_base),
        "65536",
        "0",
        str(MAP.gid_base),
        "65536",
        "allow",
    ]
    assert "<LOOPBACK,UP" in _lo_flags(net)


def test_user_and_network_namespaces_in_one_helper(paths: tuple[str, str]) -> None:
    user, net = paths
    namespaces.pin_new_namespaces(user, MAP.uid_map(), MAP.gid_map(), net)
    _check_pinned(user, net)


def test_network_namespace_alone(paths: tuple[str, str]) -> None:
    _, net = paths
    namespaces.pin_new_namespaces("", "", "", net)
    assert _bound(net)
    assert "<LOOPBACK,UP" in _lo_flags(net)


def test_user_namespace_alone(paths: tuple[str, str]) -> None:
    user, net = paths
    namespaces.pin_new_namespaces(user, MAP.uid_map(), MAP.gid_map(), "")
    assert _bound(user) and not os.path.exists(net)
    res = subprocess.run(
        ["nsenter", f"--user={user}", "cat", "/proc/self/uid_map"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert res.stdout.split() == ["0", str(MAP.uid_base), "65536"]


def test_a_refused_map_leaves_nothing_bound(paths: tuple[str, str]) -> None:
    user, net = paths
    with pytest.raises(OSError, match="uid_map"):
        # Two lines mapping the same inside ID: the kernel refuses it.
        namespaces.pin_new_namespaces(user, "0 3100000 10\n0 3300000 10\n", MAP.gid_map(), net)
    assert not _bound(user) and not _bound(net)


def test_the_zygote_makes_them(paths: tuple[str, str], tmp_path: Path) -> None:
    user, net = paths
    sock = tmp_path / "zygote.sock"
    proc = start_zygote(sock)
    try:
        req: dict[str, object] = {
            "cmd": "namespaces",
            "userns": user,
            "uid_map": MAP.uid_map(),
            "gid_map": MAP.gid_map(),
            "netns": net,
        }
        assert spawn_request(sock, req, timeout=10) == {"ok": True}
        _check_pinned(user, net)
        namespaces.unpin_ns(user)
        namespaces.unpin_ns(net)
        with pytest.raises(LxpyError, match="uid_map"):
            spawn_request(sock, {**req, "uid_map": "0 3100000 10\n0 3300000 10\n"}, timeout=10)
        assert not _bound(user) and not _bound(net)
        with pytest.raises(LxpyError, match="userns or netns a path"):
            spawn_request(sock, {**req, "userns": "", "netns": ""}, timeout=10)
    finally:
        proc.kill()
        proc.wait(10)
