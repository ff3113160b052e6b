"""security.* keys in container records, the launch spec's security fields,
and the API's peer check (with real sockets and /proc)."""

from __future__ import annotations

import grp
import os
import socket

import pytest

from lxpy.daemon import peers
from lxpy.daemon.security import check_config, check_update, describe, launch_fields
from lxpy.errors import InvalidArgument
from lxpy.model.config import Container, validate_config
from lxpy.model.security import IdmapRecord
from lxpy.runtime.spec import LaunchSpec


def test_security_keys_are_registered_and_parsed() -> None:
    cfg = validate_config(
        {
            "security.privileged": "no",
            "security.idmap.isolated": "false",
            "security.syscalls.deny": "ptrace, mount",
            "security.capabilities.drop": "CAP_SYS_MODULE sys_time",
        }
    )
    assert cfg["security.privileged"] is False
    assert cfg["security.syscalls.deny"] == ["ptrace", "mount"]
    assert cfg["security.capabilities.drop"] == ["sys_module", "sys_time"]
    with pytest.raises(InvalidArgument, match="security.idmap.size"):
        validate_config({"security.idmap.size": "100"})


def test_check_config_knows_the_filter_table() -> None:
    with pytest.raises(InvalidArgument, match="uname"):
        check_config({"security.syscalls.deny": ["uname"]})
    with pytest.raises(InvalidArgument, match="both name"):
        check_config({"security.syscalls.deny": ["ptrace"], "security.syscalls.allow": ["ptrace"]})
    assert check_config({"security.syscalls.allow": ["keyctl"]}).syscalls_allow == ("keyctl",)


def test_record_keeps_its_idmap_through_toml() -> None:
    rec = IdmapRecord(1065536, 1065536, 65536, "shift", True)
    c = Container("web", "busybox", "now", {}, rec)
    back = Container.from_toml(c.to_toml())
    assert back == c and back.idmap == rec
    assert c.to_json()["idmap"] == rec.to_json()
    assert "ownership shifted" in describe(c)
    assert Container.from_toml(Container("a", "t", "now").to_toml()).idmap is None
    with pytest.raises(InvalidArgument, match="method"):
        IdmapRecord.from_json({"uid_base": 1065536, "gid_base": 1065536, "method": "magic"})


def test_shifted_containers_keep_their_map() -> None:
    c = Container("web", "busybox", "now", {}, IdmapRecord(1065536, 1065536, method="shift"))
    with pytest.raises(InvalidArgument, match="shifted"):
        check_update(c, {"security.privileged": True})
    with pytest.raises(InvalidArgument, match="shifted"):
        check_update(c, {"security.idmap.size": 131072})
    check_update(c, {"security.syscalls.deny": ["ptrace"]})
    idm = Container("web", "busybox", "now", {}, IdmapRecord(1065536, 1065536))
    check_update(idm, {"security.privileged": True})


def test_launch_fields() -> None:
    priv = Container("p", "t", "now", {"security.privileged": True, "security.no_new_privs": True})
    fields = launch_fields(priv, check_config(priv.config))
    assert "uid_base" not in fields and fields["no_new_privs"] is True
    unpriv = Container("u", "t", "now", {}, IdmapRecord(1065536, 1131072))
    fields = launch_fields(unpriv, check_config(unpriv.config))
    assert (fields["uid_base"], fields["gid_base"], fields["idmap_method"]) == (
        1065536,
        1131072,
        "idmapped",
    )
    with pytest.raises(InvalidArgument, match="no ID range"):
        launch_fields(Container("n", "t", "now"), check_config({}))


def test_launch_spec_security_fields() -> None:
    base = {"name": "c", "rootfs": "/", "control_socket": "/run/x.sock"}
    spec = LaunchSpec.from_json(
        {**base, "userns": "/run/u", "uid_base": 1065536, "gid_base": 1065536}
        | {"idmap_size": 65536, "syscalls_deny": ["ptrace"]}
    )
    assert not spec.privileged and spec.syscalls_deny == ("ptrace",)
    assert LaunchSpec.from_json(spec.to_json()) == spec
    assert LaunchSpec.from_json(base).privileged
    with pytest.raises(InvalidArgument, match="uid_base"):
        LaunchSpec.from_json({**base, "userns": "/run/u"})
    with pytest.raises(InvalidArgument, match="idmap_method"):
        LaunchSpec.from_json(
            {**base, "userns": "/run/u", "uid_base": 1, "gid_base": 1, "idmap_size": 65536}
            | {"idmap_method": "magic"}
        )


def test_peer_credentials_of_a_real_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = peers.peer_of(a)
    assert peer is not None
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert peer.comm and peer.comm != "?"
    # SO_PEERGROUPS: the supplementary groups as connect() saw them.
    assert peer.groups == set(os.getgroups())
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with tcp:
        assert peers.peer_of(tcp) is None


def test_tiers_of_callers() -> None:
    me = os.getpid()
    none = peers.Groups("lxpy-no-such-group", "lxpy-no-such-user-group")
    root = peers.admit(peers.Peer(me, 0, 0), none)
    assert root is not None and root.tier is peers.Tier.ADMIN and not root.restricted
    # Not root and in neither group: refused.
    assert peers.admit(peers.Peer(me, 4242, 4242), none) is None
    own = grp.getgrgid(os.getgid()).gr_name
    # The primary group counts...
    admin = peers.admit(peers.Peer(me, 4242, os.getgid()), peers.Groups(own, "x-none"))
    assert admin is not None and admin.tier is peers.Tier.ADMIN
    user = peers.admit(peers.Peer(me, 4242, os.getgid()), peers.Groups("x-none", own))
    assert user is not None and user.restricted and user.uid == 4242
    # ...and so do the supplementary groups.
    extra = peers.Peer(me, 4242, 4242, groups=frozenset({os.getgid()}))
    user = peers.admit(extra, peers.Groups("", own))
    assert user is not None and user.restricted
    # A member of both groups is an admin.
    both = peers.admit(extra, peers.Groups(own, own))
    assert both is not None and both.tier is peers.Tier.ADMIN
    # No peer (an in-process caller) is trusted.
    assert peers.admit(None) is peers.INTERNAL


def test_nesting_is_a_checked_key_shown_in_info_and_sent_to_the_launch() -> None:
    assert validate_config({"security.nesting": "on"})["security.nesting"] is True
    with pytest.raises(InvalidArgument, match="security.nesting: expected true or false"):
        validate_config({"security.nesting": "sometimes"})
    rec = IdmapRecord(1065536, 1065536)
    off = Container("a", "t", "now", {}, rec)
    on = Container("b", "t", "now", {"security.nesting": True}, rec)
    assert "nesting" not in describe(off) and describe(on).endswith(
        "nesting on (container runtimes may run inside)"
    )
    assert launch_fields(off, check_config(off.config))["nesting"] is False
    assert launch_fields(on, check_config(on.config))["nesting"] is True
    base = {"name": "c", "rootfs": "/", "control_socket": "/run/x.sock"}
    spec = LaunchSpec.from_json(
        base | {"nesting": True, "cgroup_view": "hybrid", "cgroup_v1": ["memory:memory"]}
    )
    assert spec.cgroup_v1 == ("memory:memory",)
    assert LaunchSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InvalidArgument, match="cgroup_v1"):
        LaunchSpec.from_json(base | {"cgroup_v1": "memory"})


def test_the_hybrid_view_mounts_controllers_and_systemds_hierarchy_only() -> None:
    from lxpy.runtime.monitor import _named_only, _v1_options

    assert _v1_options(("cpu", "cpuacct")) == "cpu,cpuacct"
    assert _v1_options(("name=systemd",)) == "none,name=systemd"
    # A tool's own named hierarchy is left out of a nesting container's view.
    assert _named_only(("name=lxpytest1",)) == "name=lxpytest1"
    assert _named_only(("memory",)) == ""
