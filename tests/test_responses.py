"""Which responses complete a request (D14), the 0.0.0.0 repair (D16), the
bootstrap resend, Close ending raw requests and the verification of new
senders: core on simnet, with responses injected through ``Engine.receive``."""

from __future__ import annotations

import pytest
from simnet import Outcome, SimNetwork, SimNode

import dht.core.operations as operations_module
import dht.core.verification as verification_module
from dht.errors import ClosedError, WrongNode
from dht.keys import K, random_id
from dht.wire import Event, EventType, Node


def _silent_peer_request(seed: int) -> tuple[SimNetwork, SimNode, SimNode, list[object], bytes]:
    """A PING from ``asker`` to a ``peer`` that never answers by itself; the
    list collects what reaches the request's callbacks."""
    net = SimNetwork(seed=seed)
    asker, peer = net.add_node(), net.add_node()
    peer.online = False
    ends: list[object] = []
    asker.engine.request(
        peer.address,
        peer.id,
        EventType.PING,
        None,
        lambda event, source: ends.append(event) or True,
        ends.append,
    )
    [request_id] = asker.engine.requests._pending
    return net, asker, peer, ends, request_id


WRONG = {
    # name: (counter, how the response is wrong)
    "from another address": (
        "drop-spoofed-response",
        lambda asker, peer, rid: (Event(rid, peer.id, EventType.PONG, True), ("127.0.0.1", 1)),
    ),
    "of another type": (
        "drop-wrong-response-type",
        lambda asker, peer, rid: (Event(rid, peer.id, EventType.STORE, True), peer.address),
    ),
    "claiming our own id": (
        "drop-own-id",
        lambda asker, peer, rid: (Event(rid, asker.id, EventType.PONG, True), peer.address),
    ),
    "with an unknown id": (
        "drop-unsolicited-response",
        lambda asker, peer, rid: (Event(random_id(), peer.id, EventType.PONG, True), peer.address),
    ),
}


@pytest.mark.parametrize("case", WRONG)
def test_a_response_that_cannot_answer_the_request_is_dropped(case: str) -> None:
    counter, make = WRONG[case]
    _, asker, peer, ends, request_id = _silent_peer_request(seed=31)
    event, source = make(asker, peer, request_id)
    asker.engine.receive(event, source)
    assert ends == []
    assert asker.engine.stats.snapshot()[counter] == 1
    assert request_id in asker.engine.requests._pending  # still waiting for the real one
    right = Event(request_id, peer.id, EventType.PONG, True)
    asker.engine.receive(right, peer.address)
    assert ends == [right]
    asker.engine.receive(right, peer.address)  # a duplicate ends nothing again
    assert ends == [right]


def test_an_answer_from_the_address_under_another_id_fails_the_request_at_once() -> None:
    """The node at the address knows the request's unguessable id, and says
    it is another node: the one asked for is not there (it moved, or was
    made up by whoever listed it). Waiting for the timeout only slowed the
    lookup that asked it."""
    _, asker, peer, ends, request_id = _silent_peer_request(seed=31)
    asker.engine.table.add_verified(peer.id, peer.address, 0.0)
    other = random_id()
    asker.engine.receive(Event(request_id, other, EventType.PONG, True), peer.address)
    [error] = ends
    assert isinstance(error, WrongNode)
    assert (error.address, error.expected, error.answered) == (peer.address, peer.id, other)
    assert asker.engine.stats.snapshot()["answer-wrong-node"] == 1
    assert request_id not in asker.engine.requests._pending
    [contact] = asker.engine.table.contacts()
    assert contact.failures == 1
    asker.engine.receive(Event(request_id, peer.id, EventType.PONG, True), peer.address)
    assert ends == [error]  # ended once


def test_close_fails_each_pending_request_once_with_closed_error() -> None:
    net, asker, _, ends, _ = _silent_peer_request(seed=32)
    asker.engine.close()
    assert len(ends) == 1 and isinstance(ends[0], ClosedError)
    net.run_until(lambda: False, limit=5.0)  # past the timeout: nothing more
    assert len(ends) == 1


def test_the_0000_self_entry_is_repaired_and_other_unusable_entries_dropped() -> None:
    # D16: the reference lists itself as 0.0.0.0:port; only the sender's own
    # entry can be repaired (from the datagram's source address).
    sender, other, zero_port, good = (random_id() for _ in range(4))
    nodes = [
        Node(sender, ("0.0.0.0", 5000)),
        Node(other, ("0.0.0.0", 6000)),
        Node(zero_port, ("127.0.0.5", 0)),
        Node(sender, ("0.0.0.0", 0)),
        Node(good, ("127.0.0.6", 7000)),
    ]
    usable = operations_module.usable_nodes(nodes, sender, ("127.0.0.9", 4000))
    assert usable == [Node(sender, ("127.0.0.9", 5000)), Node(good, ("127.0.0.6", 7000))]
    many = [Node(random_id(), ("127.0.0.7", 1000 + i)) for i in range(3 * K)]
    assert operations_module.usable_nodes(many, sender, ("127.0.0.9", 4000)) == many[:K]


def test_bootstrap_resends_its_first_request_when_it_is_lost() -> None:
    net = SimNetwork(seed=33)
    seed_node, joiner = net.add_node(), net.add_node()
    lost: list[bytes] = []
    send = joiner.engine._transport

    def lose_the_first(datagrams: list[bytes], destination: tuple[str, int]) -> None:
        if destination == seed_node.address and not lost:
            lost.extend(datagrams)
            return
        send(datagrams, destination)

    joiner.engine._transport = lose_the_first  # type: ignore[method-assign]
    joined = Outcome()
    joiner.engine.bootstrap([seed_node.address], joined.store_done)
    assert net.run_until(lambda: joined.ended, limit=10.0)
    assert lost and joined.ends == [None]
    assert seed_node.id in joiner.engine.table


def test_verification_pings_are_bounded_under_a_flood_of_unknown_senders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verification_module, "MAX_VERIFYING", 5)
    net = SimNetwork(seed=34)
    node = net.add_node()
    for i in range(50):  # unknown ids from addresses where nothing answers
        ping = Event(random_id(), random_id(), EventType.PING)
        node.engine.receive(ping, (f"127.0.1.{i + 1}", 4000))
    assert len(node.engine.verifier.verifying) == 5
    assert node.engine.pending_requests == 5


def test_new_ids_flooding_from_one_address_leave_verification_to_others() -> None:
    # PINGs with fresh sender ids from one address filled every verification
    # slot; honest newcomers were never pinged, so never entered the table.
    net = SimNetwork(seed=40)
    node = net.add_node()
    for i in range(500):
        ping = Event(random_id(), random_id(), EventType.PING)
        node.engine.receive(ping, ("127.0.4.4", 3000 + i))
    assert len(node.engine.verifier.verifying) == verification_module.MAX_VERIFYING // 2
    newcomer = net.add_node()
    node.engine.receive(Event(random_id(), newcomer.id, EventType.PING), newcomer.address)
    assert net.run_until(lambda: newcomer.id in node.engine.table, limit=5.0)


def test_many_unproven_requesters_sharing_an_address_are_all_verified_and_answered() -> None:
    # A loopback cluster: every node on 127.0.0.1. With 16 verifications per
    # address always, 24 of 40 requesters were never pinged, and their held
    # answers never sent.
    net = SimNetwork(seed=7, one_host=True)
    holder = net.add_node(amplification_limit=20_000)
    key = random_id()
    for i in range(2):
        assert holder.storage.Set(key, bytes([i]) * 15_000, net.clock.wall_ns(), 10**15)
    found = []
    for _ in range(40):
        requester = net.add_node()
        requester.engine.table.add_verified(holder.id, holder.address, net.clock.now)
        outcome = Outcome()
        requester.engine.find(key, 0, outcome.value, outcome.find_done)
        found.append(outcome)
    assert net.run_until(lambda: all(len(outcome.values) == 2 for outcome in found), limit=0.5)


def test_a_contact_moves_only_once_its_old_address_fails_a_ping() -> None:
    """D15: after one missed reply, a contact moved to whatever address next
    answered for its id, so an impostor listing a node's id at its own
    address could take its place in every table that met it."""
    net = SimNetwork(seed=40)
    asker, real = net.add_node(), net.add_node()
    asker.engine.table.add_verified(real.id, real.address, net.clock.now)
    impostor = net.add_node(real.id)  # answers as the real node's id, elsewhere
    ends: list[object] = []
    for _ in range(2):  # two unanswered requests made the contact movable before
        asker.engine.table.failed(real.id, real.address)
    asker.engine.request(
        impostor.address,
        real.id,
        EventType.PING,
        None,
        lambda *_: ends.append(1) or True,
        ends.append,
    )
    net.run_until(lambda: False, limit=3.0)
    assert ends == [1]  # the impostor did answer
    assert asker.engine.table.address_of(real.id) == real.address  # the real one answered our ping
    assert "contact-moved" not in asker.engine.stats.snapshot()
    # The node really moves: its old address is silent, so it follows.
    moved = net.add_node(real.id)
    real.crash()
    asker.engine.request(moved.address, real.id, EventType.PING, None, lambda *_: True, ends.append)
    net.run_until(lambda: False, limit=3.0)
    assert asker.engine.table.address_of(real.id) == moved.address
    assert asker.engine.stats.snapshot()["contact-moved"] == 1
