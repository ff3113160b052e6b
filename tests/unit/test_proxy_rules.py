"""The published ports' DNAT table, as nft script text (no root)."""

from __future__ import annotations

from lxpy.network import proxy


def _rule(listen: str, target: str = "10.87.0.5", port: int = 80) -> proxy.Dnat:
    return proxy.Dnat("web", "http", proxy.parse_endpoint("listen", listen), target, port)


def test_wildcard_listen_leaves_loopback_to_the_forwarder() -> None:
    script = proxy.render("lxpy-abc-proxy", [_rule("tcp:0.0.0.0:8080")])
    rows = [line.strip() for line in script.splitlines() if "dnat ip to" in line]
    match = "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080"
    # One in prerouting (from outside), one in output (from the host).
    assert rows == [f'{match} dnat ip to 10.87.0.5:80 comment "web/http"'] * 2
    assert "type nat hook prerouting priority dstnat" in script
    assert "type nat hook output priority -100" in script
    assert "ct status dnat accept" in script


def test_specific_address_and_udp() -> None:
    script = proxy.render("t", [_rule("udp:192.0.2.1:5353", port=53)])
    assert "ip daddr 192.0.2.1 udp dport 5353 dnat ip to 10.87.0.5:53" in script


def test_loopback_only_listen_needs_no_rule_and_no_table() -> None:
    # Only the forwarder carries it: the table is removed, not left empty.
    script = proxy.render("t", [_rule("tcp:127.0.0.1:8080")])
    assert script == "table inet t {}\ndelete table inet t\n"
    assert proxy.render("t", []) == script


def test_rules_are_ordered_and_the_table_replaced_whole() -> None:
    a = proxy.Dnat("b", "x", proxy.parse_endpoint("listen", "tcp:0.0.0.0:1"), "10.0.0.2", 1)
    b = proxy.Dnat("a", "y", proxy.parse_endpoint("listen", "tcp:0.0.0.0:2"), "10.0.0.3", 2)
    script = proxy.render("t", [a, b])
    assert script.startswith("table inet t {}\ndelete table inet t\ntable inet t {")
    assert script.index('"a/y"') < script.index('"b/x"')


def test_dnat_only_reaches_addresses_outside_the_container_loopback() -> None:
    assert proxy.dnat_possible(proxy.parse_endpoint("connect", "tcp:10.87.0.5:80"))
    assert not proxy.dnat_possible(proxy.parse_endpoint("connect", "tcp:127.0.0.1:80"))
    assert not proxy.dnat_possible(proxy.parse_endpoint("connect", "tcp:127.0.0.53:80"))
