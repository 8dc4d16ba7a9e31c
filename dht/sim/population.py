"""The nodes of a simulation: who joins, through whom, and who leaves.

Nodes join by the library's own bootstrap (a lookup of their own id)
through a node chosen at random among those already joined. With churn,
each node draws a session length when it is created; when it ends the
node leaves abruptly (``SimNode.crash``: its engine closes, it says
nothing, datagrams to it are lost) and a new node, with a new id and a new
address, joins in its place, so the population stays at its size.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import BootstrapError
from ..wire.events import Address
from .addresses import AddressPool
from .churn import Sessions
from .network import Network
from .node import SimNode

JOIN_ATTEMPTS = 5
"""Bootstraps a joining node tries (through a new random node each time)."""
JOIN_RETRY_DELAY = 5.0
"""Seconds between two of them."""


class Population:
    """The live nodes, and the counts of joins and leaves."""

    def __init__(
        self,
        network: Network[SimNode],
        *,
        addresses: AddressPool,
        node_ids: random.Random,
        choices: random.Random,
        make_node: Callable[[bytes, Address], SimNode],
        sessions: Sessions | None = None,
        sessions_rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.queue = network.queue
        self._addresses = addresses
        self._node_ids = node_ids
        self._choices = choices
        self._make_node = make_node
        self.sessions = sessions
        self._sessions_rng = sessions_rng or random.Random(0)
        self.joined: list[SimNode] = []
        """Live nodes whose join succeeded, in an order only joins and
        leaves change (a random pick from it is deterministic)."""
        self._place: dict[SimNode, int] = {}  # node -> index in joined
        self.members = 0
        """Live nodes, joined or joining."""
        self.created = 0
        self.join_failures = 0
        """Nodes that gave up joining (they stay, unjoined, until they leave)."""
        self.join_retries = 0
        self.left = 0
        self.replacements = 0
        """Nodes that joined in the place of one that left."""
        self._node_seconds = 0.0
        self._since = self.queue.clock.now
        self.on_leave: Callable[[SimNode], None] | None = None
        """Called with a node about to leave."""

    # -- time alive ---------------------------------------------------------------

    def _account(self) -> None:
        now = self.queue.clock.now
        self._node_seconds += self.members * (now - self._since)
        self._since = now

    @property
    def node_seconds(self) -> float:
        """Seconds of node life so far, summed over the nodes (joining ones too)."""
        self._account()
        return self._node_seconds

    # -- joining ------------------------------------------------------------------

    def create(self) -> SimNode:
        """A new live node with a fresh id and address, not yet joined."""
        self._account()
        node = self._make_node(self._node_ids.randbytes(20), self._addresses.take())
        self.network.attach(node)
        self.members += 1
        self.created += 1
        if self.sessions is not None:
            lifetime = self.sessions.draw(self._sessions_rng)
            self.queue.post(self.queue.clock.now + lifetime, self._session_ended, node)
        return node

    def first(self) -> SimNode:
        """The node that starts the network: joined by definition."""
        node = self.create()
        self._joined(node)
        return node

    def join(self) -> SimNode:
        """A new node, bootstrapping through a random joined node."""
        node = self.create()
        self._bootstrap(node, 1)
        return node

    def _bootstrap(self, node: SimNode, attempt: int) -> None:
        if not node.online:
            return
        through = self.random_joined()
        if through is None:  # everyone left: it starts the network anew
            self._joined(node)
            return

        def done(error: Exception | None) -> None:
            if error is None:
                self._joined(node)
            elif isinstance(error, BootstrapError) and attempt < JOIN_ATTEMPTS:
                self.join_retries += 1
                self.queue.post(
                    self.queue.clock.now + JOIN_RETRY_DELAY, self._bootstrap, node, attempt + 1
                )
            elif node.online:
                self.join_failures += 1

        node.engine.bootstrap([through.address], done)

    def _joined(self, node: SimNode) -> None:
        if node.online and node not in self._place:
            self._place[node] = len(self.joined)
            self.joined.append(node)

    def random_joined(self) -> SimNode | None:
        """A live joined node, picked at random (None if there is none)."""
        joined = self.joined
        return joined[self._choices.randrange(len(joined))] if joined else None

    # -- leaving ------------------------------------------------------------------

    def _session_ended(self, node: SimNode) -> None:
        if not node.online:
            return
        self.leave(node)
        self.replacements += 1
        self.join()

    def leave(self, node: SimNode) -> None:
        """``node`` leaves abruptly."""
        if not node.online:
            return
        self._account()
        place = self._place.pop(node, None)
        if place is not None:  # swap-remove: the last one takes its place
            last = self.joined.pop()
            if last is not node:
                self.joined[place] = last
                self._place[last] = place
        self.members -= 1
        self.left += 1
        if self.on_leave is not None:
            self.on_leave(node)
        node.crash()
        self.network.detach(node.address)
