"""The access policy of restricted users (lxpy.daemon.policy)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lxpy.daemon import peers
from lxpy.daemon.http import Request
from lxpy.daemon.policy import USER_ROUTES, Policy, key_allowed, owner_of
from lxpy.daemon.routes import build_router
from lxpy.errors import Forbidden, InvalidArgument, NotFound
from lxpy.model.config import Container, Owner
from lxpy.model.limits import default_processes
from lxpy.model.settings import Settings

GROUPS = peers.Groups("lxadmins", "lxusers")
ALICE = peers.Caller(peers.Peer(1, 1001, 1001), peers.Tier.USER, GROUPS)
BOB = peers.Caller(peers.Peer(2, 1002, 1002), peers.Tier.USER, GROUPS)
ADMIN = peers.Caller(peers.Peer(3, 1003, 1003), peers.Tier.ADMIN, GROUPS)

RECORDS = {
    "a1": Container("a1", "busybox", "now", owner=Owner(1001, True)),
    "b1": Container("b1", "busybox", "now", owner=Owner(1002, True)),
    # Made by an admin who has the same uid as Alice now: still not hers.
    "adm": Container("adm", "busybox", "now", owner=Owner(1001, False)),
    "old": Container("old", "busybox", "now", {"security.no_new_privs": True}),
    "granted": Container(
        "granted", "busybox", "now", {"security.no_new_privs": True}, owner=Owner(1001, True)
    ),
}


def _router():  # type: ignore[no-untyped-def]
    # Only the table is read: no handler runs.
    d = SimpleNamespace(
        settings=Settings(admin_group="lxadmins", user_group="lxusers"),
        records=RECORDS,
        ops=None,
        bus=None,
    )
    names = ("networks", "lifecycle", "boot", "devices", "volumes", "templates", "images")
    services = SimpleNamespace(
        state=d, containers=None, backups=SimpleNamespace(d=d), **dict.fromkeys(names)
    )
    return build_router(services)  # type: ignore[arg-type]


def _ask(caller: peers.Caller, method: str, path: str, body: bytes = b"") -> None:
    r = _router()
    route, params = r.match(method, path)
    headers = {"content-type": "application/json"}
    req = Request(method, path, params=params, body=body, headers=headers, caller=caller)
    assert r.authorize is not None
    r.authorize(route, req)


def test_every_allowed_route_is_served_and_the_rest_are_refused() -> None:
    r = _router()
    served = {(rt.method, rt.pattern) for rt in r.routes}
    assert set(USER_ROUTES) <= served
    for method, pattern in sorted(served - set(USER_ROUTES)):
        path = pattern.replace("{name}", "a1").replace("{snap}", "s").replace("{id}", "x")
        with pytest.raises(Forbidden, match=r"restricted users \(group lxusers\) may not use"):
            _ask(ALICE, method, path)
        _ask(ADMIN, method, path)


def test_restricted_users_see_their_own_containers_only() -> None:
    policy = Policy(lambda: RECORDS)
    assert policy.visible(ALICE, sorted(RECORDS)) == ["a1", "granted"]
    assert policy.visible(BOB, sorted(RECORDS)) == ["b1"]
    assert policy.visible(ADMIN, sorted(RECORDS)) == sorted(RECORDS)
    _ask(ALICE, "POST", "/1.0/containers/a1/start")
    for name in ("adm", "old", "nothing"):
        with pytest.raises(NotFound, match=f"container '{name}' not found") as e:
            _ask(ALICE, "POST", f"/1.0/containers/{name}/start")
        # The hint names only her own containers.
        assert e.value.hint == "your containers: a1, granted"
    # And suggests only them: never Bob's `b1` for her `b2`.
    for name, hint in (("a2", "did you mean 'a1'?"), ("b2", "your containers: a1, granted")):
        with pytest.raises(NotFound, match=f"container '{name}' not found") as e:
            _ask(ALICE, "POST", f"/1.0/containers/{name}/start")
        assert e.value.hint == hint


@pytest.mark.parametrize(
    "key",
    [
        "security.privileged",
        "security.idmap.isolated",
        "security.nesting",
        "raw.lxc",
        "devices.disk.source",
        "boot.priority",
        "boot.delay",
        "boot.stop_priority",
    ],
)
def test_keys_outside_the_allow_list_are_refused(key: str) -> None:
    assert not key_allowed(key)
    body = f'{{"name": "x", "template": "busybox", "config": {{"{key}": "1"}}}}'.encode()
    with pytest.raises(Forbidden, match=rf"restricted users \(group lxusers\) may not set {key}"):
        _ask(ALICE, "POST", "/1.0/containers", body)
    _ask(ADMIN, "POST", "/1.0/containers", body)
    for verb, patch in (
        ("set", f'{{"set": {{"{key}": "1"}}}}'),
        ("unset", f'{{"unset": ["{key}"]}}'),
    ):
        with pytest.raises(Forbidden, match=f"may not {verb} {key}"):
            _ask(ALICE, "PATCH", "/1.0/containers/a1/config", patch.encode())


def test_nesting_is_refused_with_its_own_reason() -> None:
    body = b'{"name": "x", "template": "busybox", "config": {"security.nesting": "true"}}'
    with pytest.raises(Forbidden) as e:
        _ask(ALICE, "POST", "/1.0/containers", body)
    assert "may not set security.nesting: nesting widens what the container reaches" in str(e.value)


def test_allowed_keys_pass() -> None:
    for key in ("description", "limits.memory", "environment.TZ", "user.note", "network"):
        assert key_allowed(key)
    assert not key_allowed("environment.") and not key_allowed("user.")
    _ask(ALICE, "PATCH", "/1.0/containers/a1/config", b'{"set": {"environment.TZ": "UTC"}}')
    with pytest.raises(InvalidArgument):
        _ask(ALICE, "POST", "/1.0/containers", b'{"config": "x"}')


def test_restricted_users_keep_the_default_process_limit_or_lower() -> None:
    cap = default_processes()
    for value in ("max", str(cap + 1)):
        patch = f'{{"set": {{"limits.processes": "{value}"}}}}'.encode()
        with pytest.raises(Forbidden, match=f"may not set limits.processes above {cap}"):
            _ask(ALICE, "PATCH", "/1.0/containers/a1/config", patch)
        _ask(ADMIN, "PATCH", "/1.0/containers/adm/config", patch)
    body = b'{"name": "x", "template": "busybox", "config": {"limits.processes": "max"}}'
    with pytest.raises(Forbidden, match="limits.processes"):
        _ask(ALICE, "POST", "/1.0/containers", body)
    _ask(
        ALICE,
        "PATCH",
        "/1.0/containers/a1/config",
        f'{{"set": {{"limits.processes": {cap}}}}}'.encode(),
    )
    _ask(ALICE, "PATCH", "/1.0/containers/a1/config", b'{"unset": ["limits.processes"]}')


def test_a_copy_keeps_to_the_keys_of_a_create() -> None:
    _ask(ALICE, "POST", "/1.0/containers/a1/copy", b'{"name": "a2"}')
    with pytest.raises(Forbidden, match="may not copy container 'granted'.*security.no_new_privs"):
        _ask(ALICE, "POST", "/1.0/containers/granted/copy", b'{"name": "g2"}')
    assert owner_of(ALICE) == Owner(1001, True)
    assert owner_of(ADMIN) == Owner(1003, False)
    assert owner_of(peers.INTERNAL) == Owner(0, False)


def test_events_of_other_containers_are_left_out() -> None:
    records = dict(RECORDS)
    policy = Policy(lambda: records)

    def ev(action: str, name: str) -> dict[str, object]:
        return {"type": "lifecycle", "action": action, "resource": f"containers/{name}"}

    wanted = policy.event_filter(ALICE)
    assert wanted(ev("container-state", "a1"))
    assert not wanted(ev("container-state", "b1"))
    assert not wanted({"type": "operation", "operation": {}})
    # Her container deleted, then a name she used taken by an admin's.
    del records["a1"]
    assert wanted(ev("container-deleted", "a1"))
    records["a1"] = Container("a1", "busybox", "now", owner=Owner(0))
    assert not wanted(ev("container-created", "a1"))
    assert policy.event_filter(ADMIN)(ev("container-created", "a1"))


def test_network_views() -> None:
    policy = Policy(lambda: RECORDS)
    net: dict[str, object] = {
        "name": "br",
        "used_by": ["a1", "adm", "b1"],
        "leases": [{"mac": "m-a1"}, {"mac": "m-adm"}, {"mac": "m-b1"}],
    }
    view = policy.network_view(ALICE, net, lambda c: [f"m-{c}"])
    assert view["used_by"] == ["a1"] and view["leases"] == [{"mac": "m-a1"}]
    assert policy.network_view(ADMIN, net, lambda c: []) is net
