"""The network model: names, subnets, free-subnet choice, stable identities, nft rules."""

from __future__ import annotations

import ipaddress

import pytest

from lxpy.errors import InvalidArgument
from lxpy.model.config import Container, validate_config
from lxpy.model.network import (
    Network,
    first_free_subnet,
    mac_address,
    parse_network_list,
    parse_subnet,
    validate_network_name,
    veth_name,
)
from lxpy.model.settings import settings_from_mapping
from lxpy.network import dnsmasq, nftables

N = ipaddress.IPv4Network


def test_network_names_fit_an_interface_name() -> None:
    assert validate_network_name("lxpybr0") == "lxpybr0"
    with pytest.raises(InvalidArgument, match="at most 15"):
        validate_network_name("a" * 16)
    with pytest.raises(InvalidArgument):
        validate_network_name("0bad")


def test_subnets() -> None:
    assert parse_subnet("10.87.3.1/24") == N("10.87.3.0/24")
    for bad in ("10.0.0.0/30", "fd00::/64", "nonsense", "10.0.0.0/7"):
        with pytest.raises(InvalidArgument):
            parse_subnet(bad)
    net = Network("br", N("10.87.3.0/24"))
    assert str(net.gateway) == "10.87.3.1"
    assert [str(a) for a in net.dhcp_range] == ["10.87.3.2", "10.87.3.254"]
    assert str(net.check_pinned("10.87.3.50")) == "10.87.3.50"
    for bad in ("10.87.3.1", "10.87.3.255", "10.88.0.5"):
        with pytest.raises(InvalidArgument, match="not usable"):
            net.check_pinned(bad)


def test_network_record_round_trips() -> None:
    net = Network("lab", N("10.87.9.0/24"), nat=False)
    assert Network.from_toml(net.to_toml()) == net
    with pytest.raises(InvalidArgument, match="missing key 'subnet'"):
        Network.from_toml('name = "lab"\n')


def test_first_free_subnet_skips_used_and_overlapping() -> None:
    assert first_free_subnet([]) == N("10.87.0.0/24")
    used = [N("10.87.0.0/24"), N("10.87.1.128/25"), N("192.0.2.0/24")]
    assert first_free_subnet(used) == N("10.87.2.0/24")
    assert first_free_subnet([N("10.0.0.0/8")]) is None


def test_identities_are_stable_and_distinct() -> None:
    v = veth_name("/var/lib/lxpy", "web")
    assert v.startswith("lxpy-") and len(v) == 15
    assert v == veth_name("/var/lib/lxpy", "web")
    assert v != veth_name("/other/root", "web") != veth_name("/var/lib/lxpy", "web", 1)
    mac = mac_address("/var/lib/lxpy", "web")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered unicast
    assert mac != mac_address("/var/lib/lxpy", "db")


def test_config_keys() -> None:
    cfg = validate_config({"network": "a, b", "ipv4.address": "10.87.0.9"})
    assert cfg == {"network": ["a", "b"], "ipv4.address": "10.87.0.9"}
    assert validate_config({"network": ""}) == {"network": []}
    with pytest.raises(InvalidArgument, match="named twice"):
        parse_network_list("network", ["a", "a"])
    with pytest.raises(InvalidArgument, match="ipv4.address"):
        validate_config({"ipv4.address": "10.87.0.300"})
    c = Container("web", "busybox", "", {"network": ["lxpybr0"], "ipv4.address": "10.87.0.9"})
    assert Container.from_toml(c.to_toml()) == c


def test_settings_keys() -> None:
    s = settings_from_mapping({"default_network": "", "default_subnet": "10.90.0.0/24"})
    assert s.default_network == "" and s.default_subnet == "10.90.0.0/24"
    with pytest.raises(InvalidArgument, match="default_subnet"):
        settings_from_mapping({"default_subnet": "x"})


def test_nft_script_replaces_the_table_whole() -> None:
    nets = [Network("a", N("10.87.0.0/24")), Network("b", N("10.87.1.0/24"), nat=False)]
    text = nftables.render("lxpy-1234", nets)
    lines = text.splitlines()
    assert lines[:2] == ["table inet lxpy-1234 {}", "delete table inet lxpy-1234"]
    assert 'ip saddr 10.87.0.0/24 ip daddr != 10.87.0.0/24 oifname != "a" masquerade' in text
    assert "10.87.1.0/24" not in text and 'iifname "b" accept' in text
    assert nftables.render("lxpy-1234", []).count("\n") == 2


def test_dnsmasq_command_hosts_and_leases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = Network("br9", N("10.87.5.0/24"))
    paths = dnsmasq.Paths(
        tmp_path / "leases", tmp_path / "hosts", tmp_path / "pid", tmp_path / "dnsmasq.log"
    )
    cmd = dnsmasq.command("dnsmasq", net, paths)
    assert "--interface=br9" in cmd and "--listen-address=10.87.5.1" in cmd
    # A daemon of its own, logging beside its leases: it outlives lxpyd.
    assert "--keep-in-foreground" not in cmd and f"--log-facility={paths.log}" in cmd
    assert "--dhcp-range=10.87.5.2,10.87.5.254,255.255.255.0,1h" in cmd
    assert "--local=/lxpy/" in cmd and "--conf-file=/dev/null" in cmd
    dnsmasq.write_hosts(
        paths.hosts,
        [
            dnsmasq.Host("02:00:00:00:00:02", "web", "10.87.5.9"),
            dnsmasq.Host("02:00:00:00:00:01", "db"),
        ],
    )
    assert paths.hosts.read_text() == "02:00:00:00:00:01,db\n02:00:00:00:00:02,10.87.5.9,web\n"
    paths.leases.write_text(
        "1700000000 02:00:00:00:00:02 10.87.5.9 web 01:02:00:00:00:00:02\nduid 00:01:00:01\n"
    )
    assert dnsmasq.read_leases(paths.leases) == [
        dnsmasq.Lease("02:00:00:00:00:02", "10.87.5.9", "web", 1700000000)
    ]
    assert dnsmasq.read_leases(tmp_path / "none") == []
