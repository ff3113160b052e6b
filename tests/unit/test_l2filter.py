"""Port filtering on managed bridges: the keys, the addresses, the nft scripts.

The rules themselves are tried against the kernel in
tests/integration/test_l2_filter.py; here, what lxpy decides before nft.
"""

from __future__ import annotations

import ipaddress

import pytest

from lxpy.daemon import portfilter
from lxpy.errors import Busy, InvalidArgument, LxpyError
from lxpy.model.config import KEYS, validate_config
from lxpy.model.network import Network
from lxpy.model.security import SecurityConfig
from lxpy.network import l2filter, nftables
from lxpy.network.dnsmasq import Lease
from lxpy.network.links import Nic

NET = Network("lab", ipaddress.IPv4Network("10.90.0.0/29"))  # .2 .. .6 for containers
MAC = "02:aa:bb:cc:dd:ee"


def nic(**kw: object) -> Nic:
    base: dict[str, object] = {
        "network": "lab",
        "bridge": "lab",
        "host": "lxpy-0123456789",
        "peer": "eth0",
        "mac": MAC,
    }
    return Nic(**{**base, **kw})  # type: ignore[arg-type]


def test_keys_are_booleans_on_by_default_and_live() -> None:
    assert SecurityConfig.from_config({}).mac_filtering is True
    assert SecurityConfig.from_config({}).ipv4_filtering is True
    cfg = validate_config({"security.mac_filtering": "off", "security.ipv4_filtering": "0"})
    assert cfg == {"security.mac_filtering": False, "security.ipv4_filtering": False}
    with pytest.raises(InvalidArgument, match="security.ipv4_filtering: expected true or false"):
        validate_config({"security.ipv4_filtering": "maybe"})
    assert KEYS["security.mac_filtering"].live and KEYS["security.ipv4_filtering"].live
    assert not KEYS["security.privileged"].live
    # IPv4 filtering relies on MAC filtering, as in Incus.
    assert SecurityConfig.from_config({"security.mac_filtering": False}).filters_mac
    both_off = {"security.mac_filtering": False, "security.ipv4_filtering": False}
    assert not SecurityConfig.from_config(both_off).filters_mac


def test_pick_address_prefers_the_lease_then_the_lowest_free() -> None:
    assert NET.pick_address(set()) == "10.90.0.2"
    assert NET.pick_address({"10.90.0.2", "10.90.0.3"}) == "10.90.0.4"
    assert NET.pick_address(set(), ["10.90.0.5"]) == "10.90.0.5"
    # A lease outside the range, or taken meanwhile, is not kept.
    assert NET.pick_address({"10.90.0.5"}, ["10.90.0.5", "10.90.0.1"]) == "10.90.0.2"
    assert NET.pick_address({f"10.90.0.{i}" for i in range(2, 7)}) is None


def test_fix_addresses_claims_only_for_ipv4_filtered_nics() -> None:
    live = {
        "lab": [Lease(MAC, "10.90.0.4", "a", 0), Lease("02:00:00:00:00:01", "10.90.0.2", "b", 0)]
    }
    nets = {"lab": NET}
    # Its own lease is kept; another MAC's lease is taken.
    (got,) = portfilter.fix_addresses("a", (nic(ipv4_filtering=True),), nets, {}, live)
    assert got.ipv4 == "10.90.0.4"
    (got,) = portfilter.fix_addresses("a", (nic(ipv4_filtering=True),), nets, {}, {})
    assert got.ipv4 == "10.90.0.2"
    taken = {"lab": {"10.90.0.2", "10.90.0.3"}}
    (got,) = portfilter.fix_addresses("a", (nic(ipv4_filtering=True),), nets, taken, live)
    assert got.ipv4 == "10.90.0.4"
    # Pinned, or not IPv4-filtered: left as it is.
    pinned = nic(ipv4_filtering=True, ipv4="10.90.0.6")
    assert portfilter.fix_addresses("a", (pinned, nic()), nets, {}, {}) == (pinned, nic())
    full = {"lab": {f"10.90.0.{i}" for i in range(2, 7)}}
    with pytest.raises(Busy, match="no free address left for container 'a'"):
        portfilter.fix_addresses("a", (nic(ipv4_filtering=True),), nets, full, {})


def test_describe_says_what_each_port_is_held_to() -> None:
    off = {"network": ["lab"], "security.mac_filtering": False, "security.ipv4_filtering": False}
    held = nic(mac_filtering=True, ipv4_filtering=True, ipv4="10.90.0.3")
    assert portfilter.describe({"network": ["lab"]}, ()) == "mac, ipv4"
    assert portfilter.describe({}, (held,)) == f"mac, ipv4: eth0 {MAC} 10.90.0.3"
    assert portfilter.describe(off, ()) == "off"
    mac_off = {"security.mac_filtering": False}
    assert portfilter.describe(mac_off, ()) == "mac (security.ipv4_filtering needs it), ipv4"
    assert portfilter.describe({"security.ipv4_filtering": False}, ()) == "mac"


def test_nic_records_keep_their_flags() -> None:
    n = nic(ipv4="10.90.0.3", mac_filtering=True, ipv4_filtering=True)
    assert Nic.from_json(n.to_json()) == n
    # A record written before filtering existed: its port has no rules.
    old = {k: v for k, v in n.to_json().items() if not k.endswith("_filtering")}
    assert not l2filter.filtered(Nic.from_json(old))


def test_port_rules() -> None:
    assert l2filter.port_rules(nic()) == []
    mac_only = l2filter.port_rules(nic(mac_filtering=True))
    assert mac_only[0] == f"ether saddr != {MAC} counter drop"
    assert not any("ip saddr" in r or "limit" in r for r in mac_only)
    rules = l2filter.port_rules(nic(mac_filtering=True, ipv4_filtering=True, ipv4="10.90.0.3"))
    assert rules[: len(mac_only)] == mac_only
    text = "\n".join(rules)
    for part in (
        "udp dport 67 @th,288,48 != 0x02aabbccddee",
        "udp sport { 67, 547 } counter drop",
        "nd-router-advert",
        f"limit rate over {l2filter.DHCP_RATE} burst {l2filter.DHCP_BURST} packets",
        "arp saddr ip != { 0.0.0.0, 10.90.0.3 } counter drop",
        "ip saddr != 10.90.0.3 counter drop",
    ):
        assert part in text
    # DHCP from 0.0.0.0 passes (after the rate limit), before the source check.
    assert text.index("limit rate") < text.index("ip saddr 0.0.0.0") < text.index("ip saddr !=")
    # IPv4 filtering with no address known: DHCP only.
    assert l2filter.port_rules(nic(ipv4_filtering=True))[-1] == "ether type ip counter drop"


def test_scripts_are_idempotent_transactions() -> None:
    port = nic(mac_filtering=True, ipv4_filtering=True, ipv4="10.90.0.3")
    chain = "port-lxpy-0123456789"
    add = l2filter.update_script("lxpy-t", [port]).splitlines()
    # The chain is flushed before it is filled, the dispatch rule made anew.
    assert add.index(f"flush chain bridge lxpy-t {chain}") < add.index(
        f"add rule bridge lxpy-t {chain} ether saddr != {MAC} counter drop"
    )
    assert add.count("add rule bridge lxpy-t prerouting iifname vmap @ports") == 1
    assert add.index("flush chain bridge lxpy-t prerouting") < add.index(
        "add rule bridge lxpy-t prerouting iifname vmap @ports"
    )
    assert add[-1] == f'add element bridge lxpy-t ports {{ "{port.host}" : jump {chain} }}'
    # Removal declares what it deletes, so it holds whether it was there or not.
    gone = l2filter.update_script("lxpy-t", [], [port.host]).splitlines()
    assert gone[-4:] == [
        f"add chain bridge lxpy-t {chain}",
        f'add element bridge lxpy-t ports {{ "{port.host}" : jump {chain} }}',
        f'delete element bridge lxpy-t ports {{ "{port.host}" }}',
        f"delete chain bridge lxpy-t {chain}",
    ]
    # A NIC with no filtering left loses its chain.
    assert f"delete chain bridge lxpy-t {chain}" in l2filter.update_script("lxpy-t", [nic()])
    last = l2filter.update_script("lxpy-t", [], [port.host], keep_table=False)
    assert last == "add table bridge lxpy-t\ndelete table bridge lxpy-t\n"
    # A sync starts from nothing; with no filtered port it leaves no table.
    sync = l2filter.sync_script("lxpy-t", [port, nic(host="lxpy-9999999999")])
    assert sync.startswith(last) and "lxpy-9999999999" not in sync
    assert l2filter.sync_script("lxpy-t", [nic()]) == last


@pytest.mark.parametrize("in_process", [True, False])
def test_nft_errors_name_what_was_refused(
    in_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not in_process:
        monkeypatch.setattr(nftables, "_LIB", [None])  # as without libnftables
    else:
        # nft is built on it: wherever nftables is installed, so is it.
        assert nftables._libnftables() is not None
    with pytest.raises(LxpyError, match="nft refused the test table: .*syntax error") as exc:
        nftables.run_script("this is not nft\n", "the test table", "a hint")
    assert exc.value.hint == "a hint"
