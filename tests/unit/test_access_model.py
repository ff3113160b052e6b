"""What the access tiers are built on: the owner in container records, the
group settings, and the socket's ACL."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument
from lxpy.kernel import acl
from lxpy.model.config import Container, Owner
from lxpy.model.settings import Settings, settings_from_mapping


def test_owner_round_trips_in_the_record() -> None:
    c = Container("web", "busybox", "now", owner=Owner(1001, True))
    back = Container.from_toml(c.to_toml())
    assert back.owner == Owner(1001, True)
    assert back.renamed("web2").owner == Owner(1001, True)
    assert c.to_json()["owner"] == {"uid": 1001, "restricted": True}
    assert Container.from_toml(Container("a", "t", "now").to_toml()).owner is None
    with pytest.raises(InvalidArgument, match="owner: uid"):
        Container.from_toml('name = "a"\ntemplate = "t"\n[owner]\nuid = -1\n', "rec")


def test_group_settings() -> None:
    s = settings_from_mapping({"admin_group": "ops", "user_group": ""})
    assert (s.admin_group, s.user_group) == ("ops", "")
    assert (Settings().admin_group, Settings().user_group) == ("lxpy", "lxpy-user")
    with pytest.raises(InvalidArgument, match="user_group: expected a group name"):
        settings_from_mapping({"user_group": "a b"})
    with pytest.raises(InvalidArgument, match="both 'lxpy'"):
        settings_from_mapping({"user_group": "lxpy"})


def test_acl_entries(tmp_path: Path) -> None:
    raw = acl.encode(6, 0, 0, {4242: 6, 17: 4})
    assert acl.decode(raw) == {17: 4, 4242: 6}
    sock = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    with server:
        server.bind(str(sock))
        server.listen()
        os.chmod(sock, 0o600)
        acl.set_access(str(sock), 6, 0, 0, {4242: 6})
        assert acl.named_groups(str(sock)) == {4242: 6}
        # The group bits of the mode show the mask.
        assert os.stat(sock).st_mode & 0o777 == 0o660
