"""Answering requests within budgets, then meeting their senders.

``answers.answer`` says what to answer; the ``Responder`` decides whether
and how much of it to send. A FIND_VALUE answer spends from its source's
budget of answer bytes per second (``Limits.answer_rate``); every answer to
an address not yet proven is capped at ``amplification.FACTOR`` times the
request's size, the rest held until a ping proves the address. Then the
sender is met: refreshed in the routing table if known, else pinged to be
verified (``verification``) or kept as a candidate.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from ..errors import DHTError
from ..wire.codec import encode
from ..wire.events import Address, Event, EventType, Node
from ..wire.framing import fragment
from . import nodelog
from .amplification import FACTOR, AmplificationGuard
from .answers import answer
from .diversity import Diversity
from .keeper import Keeper
from .limits import Limits
from .networks import network_of
from .ratelimit import TokenBuckets
from .routing import RoutingTable
from .sender import Sender
from .shares import UNPROVEN
from .stats import Stats
from .verification import Verifier

log = nodelog.logger("dht.engine")


class Responder:
    """Answers one node's incoming requests (listener threads)."""

    def __init__(
        self,
        *,
        table: RoutingTable,
        keeper: Keeper,
        diversity: Diversity,
        amplification: AmplificationGuard,
        verifier: Verifier,
        sender: Sender,
        stats: Stats,
        limits: Limits,
        clock: Callable[[], float],
    ) -> None:
        self._table = table
        self._keeper = keeper
        self._diversity = diversity
        self._amplification = amplification
        self._verifier = verifier
        self._sender = sender
        self._stats = stats
        self._limits = limits
        self._clock = clock
        self._answered = TokenBuckets(limits.answer_rate, 2 * limits.answer_rate)
        self._answered_lock = threading.Lock()

    def on_request(self, event: Event, source: Address, size: int) -> None:
        """Answer the request ``event`` that came from ``source`` in ``size``
        bytes of datagrams, then meet its sender."""
        sender = event.sender
        now = self._clock()
        # Only a FIND_VALUE answer can be large (the others are at most a
        # full FIND_NODE answer, bounded by the request rate), so only it
        # spends from the source's budget of answer bytes.
        account = None
        if event.type is EventType.FIND_VALUE:
            with self._answered_lock:
                account = self._answered.account(self._diversity.payer(source), now)
        # Neither is worth any work: answering costs far more than asking.
        if account is not None and account[0] <= 0:
            self._stats.incr("drop-answer-rate")
        elif self._amplification.spent(source, now):
            self._stats.incr("drop-amplification")
        else:
            sent = self._answer(event, source, FACTOR * size)
            if account is not None:
                # Without the lock: two listeners of this node racing on one
                # source's account lose an update at worst, a blur of it.
                account[0] -= sent
        # Answer first, then meet the sender: a joining node asks us and we
        # ping it back; with our answer already on its way, it knows us when
        # our ping arrives and need not ping us in turn.
        now = self._clock()
        table = self._table
        if not table.touch(sender, source, now):
            if table.wants(sender):
                self._verifier.prove(sender, source)
            else:
                table.add_candidate(sender, source, now)

    def _answer(self, event: Event, source: Address, allowance: int) -> int:
        """Answer ``event``; the bytes sent. An answer to an unproven source
        beyond ``allowance`` bytes waits for the source's proof."""
        sender = event.sender
        # A STORE's values are charged to the sender's network once its
        # address is proven; before that, anyone could be forging it (shares).
        network = UNPROVEN
        if event.type is EventType.STORE and self._amplification.is_proven(source):
            network = network_of(source[0])
        responses = answer(
            event,
            Node(sender, source),
            self._table,
            self._keeper,
            self._stats.incr,
            network=network,
            max_answer_bytes=self._limits.max_answer_bytes,
        )
        sent = 0
        for index, response in enumerate(responses):
            try:
                datagrams = fragment(response.id, encode(response))
            except DHTError as error:
                self._stats.incr("send-failed")
                log.debug("cannot answer %s: %s", source, error)
                continue
            now = self._clock()
            size = sum(map(len, datagrams))
            verdict = self._amplification.allow(source, size, now, allowance=allowance - sent)
            if verdict.prove:
                self._verifier.prove(sender, source)
            if not verdict.send:
                # Hold the rest until the ping proves the source: cut short,
                # a split answer left the requester waiting for parts.
                self._stats.incr("held-amplification")
                rest = [datagrams]
                for later in responses[index + 1 :]:
                    with contextlib.suppress(DHTError):
                        rest.append(fragment(later.id, encode(later)))
                self._amplification.hold(source, rest, now)
                return sent
            self.send_events([datagrams], source)
            sent += size
        return sent

    def send_events(self, events: list[list[bytes]], destination: Address) -> None:
        """Send the datagrams of each event; a failure is counted, not raised."""
        for datagrams in events:
            try:
                self._sender.transport(datagrams, destination)
            except OSError as error:
                self._stats.incr("send-failed")
                log.debug("cannot answer %s: %s", destination, error)
