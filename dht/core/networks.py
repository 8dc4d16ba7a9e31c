"""Which network an address belongs to, and which addresses are local.

Limits that count per network treat a /24 as one network: an attacker gets
a whole /24 more easily than many (libp2p's diversity filter groups IPv4
addresses the same way). Loopback, private and link-local addresses are
*local*: a cluster on one machine or one LAN shares one address or one /24,
so the per-address and per-network limits of an internet node would throttle
it (BEP 42 exempts local networks for the same reason).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


def network_of(host: str) -> str:
    """The /24 of an IPv4 address, as its first three octets."""
    return host.rpartition(".")[0]


LOCAL_NETWORKS = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
    )
)
"""Loopback (RFC 1122), private (RFC 1918) and link-local (RFC 3927)."""


@lru_cache(maxsize=4096)
def is_local(host: str) -> bool:
    """Whether ``host`` is in ``LOCAL_NETWORKS``."""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return any(ip in network for network in LOCAL_NETWORKS)
