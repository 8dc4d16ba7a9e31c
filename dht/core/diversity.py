"""Eclipse resistance: no one network fills a lookup, an answer or a bucket,
and no responder places ids closer to a target than the network allows.

*Diversity.* An attacker's nodes share a few addresses: ports cost
nothing, and addresses come by the /24. So each set of nodes that decides
where values go holds at most ``PER_NETWORK`` nodes of one /24: a lookup's
window of the K closest candidates (which become a Store's targets), the
contacts a FIND_NODE answer lists, and a bucket (libp2p's diversity filter
keeps 2 per IP group in a bucket). Local addresses are exempt while
``trust_local`` (``networks``): a cluster on one machine shares one address.

*Plausibility* (after Cholez et al. on KAD), which needs no exemption: in a
network of N nodes, about N / 2^c share c leading bits with any target. A
responder listing several ids that share ``log2 N + SLACK_BITS`` bits with
the target, which an honest network holds with odds of about 2^-SLACK_BITS
each, is making them up to capture the lookup.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..keys import KEY_BITS
from ..wire.events import Address, Node
from .networks import is_local, network_of

PER_NETWORK = 2
"""Nodes of one /24 a lookup's window, an answer or a bucket holds at most."""
SLACK_BITS = 8
"""How many bits closer than the network's size allows a listed id may be
before it counts as implausible (odds of about 1/256 each in an honest
network)."""
IMPLAUSIBLE_ALLOWED = 2
"""Implausibly close ids one answer may list (the target itself, a lucky
one) before all it lists is rejected."""
SMALLEST_ESTIMATE = 8
"""Below this many nodes the network's size says too little to judge."""
GROUPS_CACHED = 4096
"""Hosts whose network ``Diversity.group`` remembers (the oldest goes first)."""


class Diversity:
    """Which network a host counts against (``group``), and picking nodes
    within ``PER_NETWORK`` a network."""

    def __init__(self, *, trust_local: bool) -> None:
        self.trust_local = trust_local
        self._groups: dict[str, str | None] = {}  # every lookup asks for each candidate
        self.limiting = False
        """Whether a host the limits apply to was ever met. Until then (a
        cluster on a trusted local network) every set is diverse enough:
        ``pick`` has nothing to check. Every contact of a routing table
        passes through ``group`` on its way in."""

    def group(self, host: str) -> str | None:
        """The /24 ``host`` counts against, or None when it is exempt."""
        try:
            return self._groups[host]
        except KeyError:
            pass
        group = None if self.trust_local and is_local(host) else network_of(host)
        if len(self._groups) >= GROUPS_CACHED:
            del self._groups[next(iter(self._groups))]  # the oldest
        self._groups[host] = group
        if group is not None:
            self.limiting = True
        return group

    def payer(self, source: Address) -> object:
        """Whose budget a source spends (answer bytes, key transfer's share):
        its IP address (ports cost nothing), or, where the limits spare it
        (a trusted local network, whose cluster shares one IP), the address
        itself."""
        host = source[0]
        return source if self.group(host) is None else host

    def pick(self, nodes: list[Node], n: int) -> list[Node]:
        """The first ``n`` of ``nodes`` (all met through ``group`` before)
        with at most ``PER_NETWORK`` of one /24."""
        if not self.limiting:
            return nodes[:n]
        out: list[Node] = []
        counts: dict[str, int] = {}
        groups = self._groups  # read inline: every answer we give picks
        for node in nodes:
            host = node.address[0]
            group = groups[host] if host in groups else self.group(host)
            if group is not None:
                seen = counts.get(group, 0)
                if seen >= PER_NETWORK:
                    continue
                counts[group] = seen + 1
            out.append(node)
            if len(out) == n:
                break
        return out


def implausible(nodes: Iterable[Node], target: bytes, network_size: int) -> bool:
    """Whether an answer listing ``nodes`` places more than
    ``IMPLAUSIBLE_ALLOWED`` of them implausibly close to ``target`` for a
    network of about ``network_size`` nodes (never, below
    ``SMALLEST_ESTIMATE``)."""
    if network_size < SMALLEST_ESTIMATE:
        return False
    bits = network_size.bit_length() + SLACK_BITS  # log2 N, rounded up, + slack
    limit = 1 << (KEY_BITS - bits)  # XOR distances below it share ``bits`` bits
    number = int.from_bytes(target, "big")
    whole = target[: bits // 8]  # a shared prefix of whole bytes, checked first: cheap
    near = [node.id for node in nodes if node.id.startswith(whole)]
    if len(near) <= IMPLAUSIBLE_ALLOWED:
        return False
    close = sum(1 for node_id in near if int.from_bytes(node_id, "big") ^ number < limit)
    return close > IMPLAUSIBLE_ALLOWED
