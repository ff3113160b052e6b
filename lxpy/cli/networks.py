"""`lxpy network create`, `list`, `info` and `delete`."""

from __future__ import annotations

from lxpy.cli.output import print_json, print_table, yes_no
from lxpy.cli.parse import BOOLEAN_OPTIONAL, arg, command

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


NETWORK = arg("name", metavar="NAME", help="network name (also its bridge's name)")


@command(
    "network create",
    "create a managed network: a bridge with DHCP, DNS (NAME.lxpy) and NAT",
    NETWORK,
    arg("--subnet", metavar="CIDR", help="IPv4 subnet (default: a free 10.x.y.0/24)"),
    arg(
        "--nat",
        action=BOOLEAN_OPTIONAL,
        default=True,
        help="masquerade the containers' traffic out of the host (default: on)",
    ),
    formats=True,
)
def cmd_network_create(client: Client, args: argparse.Namespace) -> None:
    net = client.create_network(args.name, args.subnet, args.nat)
    if args.format == "json":
        print_json(net)
    else:
        print(f"created network {args.name}: {net.get('subnet')} via {net.get('gateway')}")


@command("network list", "list managed networks", formats=True)
def cmd_network_list(client: Client, args: argparse.Namespace) -> None:
    nets = client.networks()
    if args.format == "json":
        print_json(nets)
        return
    print_table(
        ("NAME", "SUBNET", "GATEWAY", "NAT", "STATUS", "USED BY"),
        (
            (
                n.get("name", ""),
                n.get("subnet", ""),
                n.get("gateway", ""),
                yes_no(n.get("nat")),
                n.get("status", ""),
                ", ".join(n.get("used_by") or ()) or "-",
            )
            for n in nets
        ),
    )


@command("network info", "show a managed network and its leases", NETWORK, formats=True)
def cmd_network_info(client: Client, args: argparse.Namespace) -> None:
    net = client.network(args.name)
    if args.format == "json":
        print_json(net)
        return
    for key in ("name", "subnet", "gateway", "nat", "domain", "bridge", "status", "error"):
        value = net.get(key)
        if key == "error" and not value:
            continue
        text = yes_no(value) if isinstance(value, bool) else str(value)
        print(f"{key + ':':9} {text}")
    print(f"dnsmasq:  pid {net.get('dnsmasq_pid') or '-'}, restarts {net.get('dnsmasq_restarts')}")
    print("used by:  " + (", ".join(net.get("used_by") or ()) or "-"))
    leases = net.get("leases") or []
    print("leases:" + ("" if leases else "   -"))
    for le in leases:
        print(f"  {le.get('ipv4')}  {le.get('mac')}  {le.get('hostname')}")


@command("network delete", "delete a managed network no container uses", NETWORK)
def cmd_network_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_network(args.name)
    print(f"deleted network {args.name}")
