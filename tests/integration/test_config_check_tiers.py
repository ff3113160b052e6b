"""Config checked on set, seen by a restricted user (group lxpy-user): a
check never names a container that is not theirs."""

from __future__ import annotations

import pytest

from tests.conftest import info, wait_for
from tests.integration.test_access_tiers import Lab, lab  # noqa: F401 (the fixture)
from tests.integration.test_network import free_subnet, net_name

pytestmark = pytest.mark.integration


def test_an_address_pinned_by_someone_elses_container_is_not_named(lab: Lab) -> None:  # noqa: F811
    net, subnet = net_name(), free_subnet()
    address = subnet.rsplit(".", 1)[0] + ".50"
    lab.d.cli("network", "create", net, "--subnet", subnet)
    try:
        pinned = ("--set", f"network={net}", "--set", f"ipv4.address={address}")
        lab.ok(lab.bob, "create", "bob-db", "-t", "busybox", *pinned)
        lab.ok(lab.alice, "create", "alice-web", "-t", "busybox", "--set", f"network={net}")
        err = lab.refused(lab.alice, "config", "set", "alice-web", "ipv4.address", address)
        assert (
            f"error: ipv4.address {address} on network {net} is pinned by another container" in err
        )
        assert "bob-db" not in err
        err = lab.refused(lab.alice, "create", "alice-2", "-t", "busybox", *pinned)
        assert "pinned by another container" in err and "bob-db" not in err
        # An admin sees every container, and is told which one.
        err = lab.refused(lab.admin, "config", "set", "alice-web", "ipv4.address", address)
        assert "is pinned by container 'bob-db'" in err
        assert "alice-2" not in lab.names(lab.admin)
        # An address one of Bob's running containers holds, not pinned.
        lab.ok(lab.bob, "create", "bob-web", "-t", "busybox", "--set", f"network={net}")
        lab.ok(lab.bob, "start", "bob-web")
        held = wait_for(lambda: info(lab.d, "bob-web")["addresses"], what="bob-web's address")[0]
        err = lab.refused(lab.alice, "config", "set", "alice-web", "ipv4.address", held)
        assert f"{held} on network {net} is held by another container, running" in err, err
        assert "bob-web" not in err
    finally:
        for name in ("bob-db", "bob-web", "alice-web", "alice-2"):
            lab.d.cli("destroy", name, "--force", check=False)
        lab.d.cli("network", "delete", net, check=False)
