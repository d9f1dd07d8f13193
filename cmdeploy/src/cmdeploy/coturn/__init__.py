"""coturn, the relay's TURN server for Delta Chat calls.

coturn's `denied-peer-ip` takes an address or a range `first-last`, not CIDR: a network
written as `10.0.0.0/8` is taken for a host name, fails to resolve, and blocks nothing.
"""

from __future__ import annotations

import ipaddress

from ..templates import render

# Never relayed to: the relay's own loopback and the private and link-local networks
# (TURN must not become a way into the relay's neighbourhood).
DENIED_PEERS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)


def peer_range(network: str) -> str:
    """`10.0.0.0/8` -> `10.0.0.0-10.255.255.255`, as coturn's denied-peer-ip takes it."""
    net = ipaddress.ip_network(network)
    return f"{net[0]}-{net[-1]}"


def turnserver_conf(
    *,
    port: int,
    realm: str,
    secret: str,
    listen_addresses: list[str],
    relay_addresses: list[str],
    min_port: int = 49152,
    max_port: int = 65535,
    denied_peers: tuple[str, ...] = DENIED_PEERS,
) -> str:
    return render(
        "coturn",
        "turnserver.conf.j2",
        port=port,
        listen_addresses=listen_addresses,
        relay_addresses=relay_addresses,
        min_port=min_port,
        max_port=max_port,
        realm=realm,
        secret=secret,
        denied_ranges=[peer_range(n) for n in denied_peers],
    )
