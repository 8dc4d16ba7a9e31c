"""The routing table (dht.core.routing; PROTOCOL.md 7.1, 7.2, D15, D17, D18, D20, D42;
suspect contacts after Kademlia section 4.1).

Ids are built relative to the local id so that a test can say exactly which
bucket a contact lands in: ``in_bucket(local, i, r)`` is at XOR distance
``2**i + (r mod 2**i)`` from ``local``, so ``cpl = 159 - i`` and it belongs
in bucket ``i``.
"""

from __future__ import annotations

import random
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht.core.routing import SUSPECT_AFTER_FAILURES, Answered, RoutingTable
from dht.keys import KEY_BITS, KEY_BYTES, K, common_prefix_length, distance

ADDRESS = ("10.0.0.1", 4000)
OTHER_ADDRESS = ("10.0.0.2", 4001)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def as_id(number: int) -> bytes:
    return number.to_bytes(KEY_BYTES, "big")


def in_bucket(local: bytes, index: int, r: int = 0) -> bytes:
    """An id that falls into bucket ``index`` of ``local``'s table."""
    offset = (1 << index) | (r & ((1 << index) - 1))
    return as_id(int.from_bytes(local, "big") ^ offset)


def bucket_ids(local: bytes, index: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct ids in bucket ``index`` (index must allow that many)."""
    rng = random.Random(seed)
    ids: list[bytes] = []
    while len(ids) < count:
        candidate = in_bucket(local, index, rng.getrandbits(KEY_BITS))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def ids_of(table: RoutingTable) -> list[bytes]:
    return [contact.id for contact in table.contacts()]


def fail_out(table: RoutingTable, node_id: bytes) -> bool:
    """Record enough failures to make ``node_id`` suspect. True if a
    verified replacement then took its place."""
    for _ in range(SUSPECT_AFTER_FAILURES - 1):
        assert table.failed(node_id, ADDRESS) is False
    return table.failed(node_id, ADDRESS)


def suspects(table: RoutingTable) -> list[bytes]:
    return [c.id for c in table.contacts() if c.suspect]


def full_table(local: bytes, index: int = 159, seed: int = 0) -> tuple[RoutingTable, list[bytes]]:
    table = RoutingTable(local)
    members = bucket_ids(local, index, K, seed)
    for now, node_id in enumerate(members):
        assert table.add_verified(node_id, ADDRESS, float(now)) is True
    return table, members


# ---------------------------------------------------------------------------
# closest: the true n closest by XOR (D17)

ids = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)
bucket_indexes = st.integers(0, KEY_BITS - 1)
id_numbers = st.integers(0, (1 << KEY_BITS) - 1)


@st.composite
def table_cases(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes], int]:
    local = draw(ids)
    # Mix uniformly random ids (they crowd into the far buckets and overflow
    # them) with ids placed in chosen buckets, near ones included.
    random_ids = draw(st.lists(ids, max_size=60))
    far_indexes = st.integers(KEY_BITS - 4, KEY_BITS - 1)
    placed = draw(st.lists(st.tuples(bucket_indexes | far_indexes, id_numbers), max_size=60))
    contacts = random_ids + [in_bucket(local, index, r) for index, r in placed]
    targets = [local, *draw(st.lists(ids, min_size=1, max_size=4))]
    near_targets = draw(st.lists(st.tuples(bucket_indexes, id_numbers), max_size=3))
    targets += [in_bucket(local, index, r) for index, r in near_targets]
    if contacts:
        targets.append(draw(st.sampled_from(contacts)))
    n = draw(st.integers(0, 2 * K + 5))
    return local, contacts, targets, n


@PROPERTY_SETTINGS
@given(table_cases())
def test_closest_is_the_true_n_closest_of_held_contacts(
    case: tuple[bytes, list[bytes], list[bytes], int],
) -> None:
    local, contacts, targets, n = case
    table = RoutingTable(local)
    for now, node_id in enumerate(contacts):
        table.add_verified(node_id, ADDRESS, float(now))
    held = ids_of(table)
    assert len(held) == len(set(held)) == len(table)
    assert local not in held
    # Each bucket holds the first K distinct ids that arrived for it.
    expected_held: dict[int, list[bytes]] = {}
    for node_id in contacts:
        if node_id == local:
            continue
        members = expected_held.setdefault(table.bucket_index(node_id), [])
        if node_id not in members and len(members) < K:
            members.append(node_id)
    assert sorted(held) == sorted(i for members in expected_held.values() for i in members)

    for target in targets:
        got = [node.id for node in table.closest(target, n)]
        expected = sorted(held, key=lambda i, t=target: distance(i, t))[:n]
        assert got == expected
        assert len(got) == len(set(got)) == min(n, len(held))
        assert local not in got


def test_closest_follows_every_change_to_the_contacts() -> None:
    # closest keeps a view of each bucket between changes: after contacts
    # join, fail out, are replaced, are promoted or move, it must read
    # exactly what the buckets hold, addresses included.
    rng = random.Random(7)
    local = rng.randbytes(KEY_BYTES)
    table = RoutingTable(local)
    pool = [
        in_bucket(local, rng.choice([156, 157, 158, 159]), rng.getrandbits(160)) for _ in range(120)
    ]
    addresses = [ADDRESS, OTHER_ADDRESS]
    for step in range(3000):
        node_id = rng.choice(pool)
        address = rng.choice(addresses)
        op = rng.randrange(4)
        if op == 0:
            table.add_verified(node_id, address, float(step))
        elif op == 1:
            table.failed(node_id, address)
        elif op == 2:
            table.add_candidate(node_id, address, float(step))
        target = rng.choice(pool)
        held = {contact.id: contact.address for contact in table.contacts()}
        # The live contacts; the suspect ones only when none is live.
        live = [i for i in held if i not in suspects(table)] or list(held)
        expected = sorted(live, key=lambda i, t=target: distance(i, t))[:K]
        got = table.closest(target, K)
        assert [node.id for node in got] == expected, step
        assert all(node.address == held[node.id] for node in got), step


def test_closest_edge_cases() -> None:
    local = as_id(1 << 100)
    table = RoutingTable(local)
    assert table.closest(local, K) == []
    node = in_bucket(local, 3, 5)
    table.add_verified(node, ADDRESS, 0.0)
    assert table.closest(local, 0) == []
    assert table.closest(local, -1) == []
    [only] = table.closest(as_id(0), K)
    assert only.id == node and only.address == ADDRESS


def test_closest_scans_past_a_full_nearer_bucket() -> None:
    # D17: the reference stops after collecting n entries from neighbouring
    # buckets; closer nodes in other buckets must still be found.
    local = as_id(0)
    table = RoutingTable(local)
    far = bucket_ids(local, 159, K, seed=1)
    for node_id in far:
        table.add_verified(node_id, ADDRESS, 0.0)
    near = [in_bucket(local, 10, r) for r in range(5)]
    for node_id in near:
        table.add_verified(node_id, ADDRESS, 0.0)
    target = in_bucket(local, 159, 12345)  # in the far bucket's region
    got = [node.id for node in table.closest(target, K)]
    assert got == sorted(far + near, key=lambda i: distance(i, target))[:K]


# ---------------------------------------------------------------------------
# bucket_index


@settings(max_examples=300, deadline=None, database=None)
@given(ids, ids)
def test_bucket_index_is_159_minus_common_prefix(local: bytes, other: bytes) -> None:
    table = RoutingTable(local)
    if other != local:
        assert table.bucket_index(other) == 159 - common_prefix_length(local, other)
        assert 0 <= table.bucket_index(other) <= 159


def test_bucket_index_examples() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    assert table.bucket_index(as_id(1 << 159)) == 159
    assert table.bucket_index(b"\xff" * KEY_BYTES) == 159
    assert table.bucket_index(as_id(1)) == 0
    assert table.bucket_index(as_id(0b10)) == 1
    assert table.bucket_index(as_id(1 << 80)) == 80
    for index in (0, 1, 7, 8, 100, 159):
        assert table.bucket_index(in_bucket(local, index, 999)) == index


# ---------------------------------------------------------------------------
# Full buckets, eviction and replacements (D18, D20)


def test_full_bucket_keeps_its_contacts() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    newcomer = in_bucket(local, 159, 0xABCDEF)
    assert table.add_verified(newcomer, ADDRESS, 100.0) is False
    assert newcomer not in table
    assert sorted(ids_of(table)) == sorted(members)
    assert len(table) == K


def test_local_id_is_never_added() -> None:
    local = as_id(42)
    table = RoutingTable(local)
    assert table.add_verified(local, ADDRESS, 0.0) is False
    table.add_candidate(local, ADDRESS, 0.0)
    assert local not in table
    assert len(table) == 0
    assert table.candidates_to_verify() == []
    assert table.touch(local, ADDRESS, 0.0) is False
    assert table.wants(local) is False
    assert table.failed(local, ADDRESS) is False


def test_add_verified_reports_new_contacts_only() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    node = in_bucket(local, 50, 1)
    assert table.add_verified(node, ADDRESS, 1.0) is True
    assert table.add_verified(node, ADDRESS, 2.0) is False
    assert len(table) == 1
    [contact] = table.contacts()
    assert contact.last_seen == 2.0 and contact.verified


def test_unanswered_requests_to_another_address_do_not_count_against_a_contact() -> None:
    # Anyone can send requests claiming a contact's id from a forged address;
    # the verification pings we send there go unanswered. Counted against
    # the id, two of them made the real contact suspect, to be replaced.
    local = as_id(0)
    table = RoutingTable(local)
    contact = in_bucket(local, 159, 1)
    assert table.add_verified(contact, ADDRESS, 0.0)
    for _ in range(5):
        assert table.failed(contact, OTHER_ADDRESS) is False
    assert contact in table and suspects(table) == []
    assert fail_out(table, contact) is False
    assert suspects(table) == [contact]  # at its own address, it counts


def test_two_failures_evict_and_promote_newest_verified_replacement() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    older, newer = bucket_ids(local, 159, 2, seed=99)
    assert table.add_verified(older, ADDRESS, 50.0) is False
    assert table.add_verified(newer, ADDRESS, 51.0) is False
    victim = members[3]
    assert table.failed(victim, ADDRESS) is False  # one failure is not enough
    assert victim in table
    assert table.failed(victim, ADDRESS) is True
    assert victim not in table
    assert newer in table
    assert older not in table
    assert len(table) == K
    # The next eviction promotes the remaining replacement.
    assert fail_out(table, members[0]) is True
    assert older in table
    assert len(table) == K
    # Nothing left to promote: the contact stays, suspect.
    assert fail_out(table, members[1]) is False
    assert members[1] in table and suspects(table) == [members[1]]
    assert len(table) == K


def test_failed_unknown_or_replacement_is_harmless() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    spare = in_bucket(local, 159, 77)
    table.add_verified(spare, ADDRESS, 9.0)  # a verified replacement
    assert table.failed(spare, ADDRESS) is False  # a failing replacement is dropped
    assert fail_out(table, members[0]) is False
    assert spare not in table
    assert suspects(table) == [members[0]]
    assert len(table) == K
    assert table.failed(in_bucket(local, 20, 3), ADDRESS) is False


def test_unverified_candidates_are_never_promoted() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    candidate = in_bucket(local, 159, 0x1234)
    table.add_candidate(candidate, OTHER_ADDRESS, 5.0)
    assert candidate not in table
    assert fail_out(table, members[0]) is False
    assert candidate not in table
    assert len(table) == K
    # It is offered for verification now that a contact is suspect ...
    assert [c.id for c in table.candidates_to_verify()] == [candidate]
    # ... and takes the suspect's place once it has answered.
    assert table.add_verified(candidate, OTHER_ADDRESS, 6.0) is True
    assert candidate in table and members[0] not in table
    assert len(table) == K
    assert table.candidates_to_verify() == []


def test_candidate_in_bucket_with_room_is_not_inserted() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    candidate = in_bucket(local, 100, 1)
    table.add_candidate(candidate, ADDRESS, 0.0)
    assert candidate not in table
    assert len(table) == 0
    assert table.closest(candidate, K) == []
    assert [c.id for c in table.candidates_to_verify()] == [candidate]
    assert not table.candidates_to_verify()[0].verified


def test_replacement_cache_is_bounded_at_bucket_size() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    replacements = bucket_ids(local, 159, K + 5, seed=7)
    assert not set(replacements) & set(members)
    for now, node_id in enumerate(replacements, start=100):
        table.add_verified(node_id, ADDRESS, float(now))
    promoted: list[bytes] = []
    for member in members:
        assert fail_out(table, member) is True
        promoted.extend(i for i in ids_of(table) if i in replacements and i not in promoted)
    # Newest first; the 5 oldest were dropped when the cache overflowed.
    assert promoted == list(reversed(replacements[5:]))
    assert len(table) == K
    assert fail_out(table, promoted[0]) is False
    assert suspects(table) == [promoted[0]]
    assert not set(replacements[:5]) & set(ids_of(table))


def test_replacement_cache_drops_unverified_entries_first() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    unverified = in_bucket(local, 159, 0xFEED)
    verified = bucket_ids(local, 159, K, seed=11)
    assert unverified not in verified and not set(verified) & set(members)
    # The oldest cache entry is verified, the unverified one comes second.
    table.add_verified(verified[0], ADDRESS, 10.0)
    table.add_candidate(unverified, ADDRESS, 11.0)
    for now, node_id in enumerate(verified[1:], start=12):
        table.add_verified(node_id, ADDRESS, float(now))  # overfills the cache: one must go
    for member in members:
        assert fail_out(table, member) is True
    # Every verified replacement survived (the oldest one included) ...
    assert sorted(ids_of(table)) == sorted(verified)
    # ... and the unverified one was dropped: not offered once a contact is suspect.
    assert fail_out(table, verified[0]) is False
    assert suspects(table) == [verified[0]]
    assert table.candidates_to_verify() == []


def test_add_verified_replaces_a_failed_contact_in_a_full_bucket() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    assert table.failed(members[5], ADDRESS) is False  # one failure: still a contact
    newcomer = in_bucket(local, 159, 0xBEEF)
    assert table.wants(newcomer) is True
    assert table.add_verified(newcomer, ADDRESS, 30.0) is True
    assert newcomer in table
    assert members[5] not in table
    assert len(table) == K


def test_a_suspect_contact_is_not_offered_while_a_contact_is_live() -> None:
    # In a network too small to replace it, a dead node offered after the
    # live ones held up every lookup for its stall time, for good.
    local = as_id(0)
    table = RoutingTable(local)
    members = [in_bucket(local, index, 1) for index in (10, 40, 80, 120, 159)]
    for now, node_id in enumerate(members):
        table.add_verified(node_id, ADDRESS, float(now))
    suspect = members[0]  # the nearest to the local id
    assert fail_out(table, suspect) is False
    assert suspect in table and len(table) == 5
    assert [n.id for n in table.closest(local, K)] == members[1:]
    assert [n.id for n in table.closest(suspect, 1)] == [members[1]]
    # Heard from again, it is live and in its place.
    assert table.touch(suspect, ADDRESS, 10.0) is True
    assert [n.id for n in table.closest(local, 4)] == members[:4]
    # Answering a request of ours does the same.
    assert fail_out(table, suspect) is False
    assert table.add_verified(suspect, ADDRESS, 11.0) is False
    assert [n.id for n in table.closest(local, 1)] == [suspect]


def test_a_table_whose_every_contact_failed_keeps_and_offers_them_all() -> None:
    # A node whose thread or link stalled for a few timeouts sees every
    # request fail. Dropping the contacts left it with an empty table: its
    # Finds ended "not found" and its Stores held only its own copy.
    rng = random.Random(5)
    local = rng.randbytes(KEY_BYTES)
    table = RoutingTable(local)
    members = [rng.randbytes(KEY_BYTES) for _ in range(40)]
    for now, node_id in enumerate(members):
        table.add_verified(node_id, ADDRESS, float(now))
    held = ids_of(table)
    for _ in range(5):
        for node_id in held:
            table.failed(node_id, ADDRESS)
    assert sorted(ids_of(table)) == sorted(held)
    assert sorted(suspects(table)) == sorted(held)
    target = rng.randbytes(KEY_BYTES)
    got = [node.id for node in table.closest(target, K)]
    assert got == sorted(held, key=lambda i: distance(i, target))[:K]


def test_a_verified_newcomer_replaces_a_suspect_before_a_contact_that_failed_once() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    assert table.failed(members[2], ADDRESS) is False  # one lost answer
    assert fail_out(table, members[9]) is False  # suspect, nothing to replace it yet
    newcomer = in_bucket(local, 159, 0xD00D)
    assert table.add_verified(newcomer, ADDRESS, 40.0) is True
    assert members[9] not in table
    assert members[2] in table and newcomer in table


# ---------------------------------------------------------------------------
# touch (D15, D20)


def test_touch_known_contact_moves_it_to_the_tail_and_resets_failures() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    a, b, c = bucket_ids(local, 159, 3, seed=3)
    for now, node_id in enumerate((a, b, c)):
        table.add_verified(node_id, ADDRESS, float(now))
    assert ids_of(table) == [a, b, c]  # least recently seen first
    assert table.failed(a, ADDRESS) is False
    assert table.touch(a, ADDRESS, 10.0) is True
    assert ids_of(table) == [b, c, a]
    contact = next(x for x in table.contacts() if x.id == a)
    assert contact.last_seen == 10.0
    assert contact.failures == 0
    # The reset means one more failure does not evict it.
    assert table.failed(a, ADDRESS) is False
    assert a in table


def test_touch_unknown_or_moved_contact_changes_nothing() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    a, b = bucket_ids(local, 159, 2, seed=4)
    table.add_verified(a, ADDRESS, 1.0)
    table.add_verified(b, ADDRESS, 2.0)
    assert table.touch(in_bucket(local, 159, 0x999), ADDRESS, 5.0) is False
    # D15: a known id claimed from another address is not updated.
    assert table.touch(a, OTHER_ADDRESS, 5.0) is False
    contact = next(x for x in table.contacts() if x.id == a)
    assert contact.address == ADDRESS
    assert contact.last_seen == 1.0
    assert ids_of(table) == [a, b]
    # Nor does an unverified candidate become a contact by being touched.
    candidate = in_bucket(local, 10, 1)
    table.add_candidate(candidate, ADDRESS, 1.0)
    assert table.touch(candidate, ADDRESS, 6.0) is False
    assert candidate not in table


def test_add_verified_does_not_move_a_healthy_contact_to_another_address() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    node = in_bucket(local, 159, 1)
    table.add_verified(node, ADDRESS, 1.0)
    assert table.add_verified(node, OTHER_ADDRESS, 2.0) is False
    [contact] = table.contacts()
    assert contact.address == ADDRESS and contact.last_seen == 1.0
    # Nor after a missed reply: anyone can list an id at their own address
    # and answer as it. It moves once its old address fails a ping (D15,
    # the engine's ping), to the new one that answered.
    table.failed(node, ADDRESS)
    assert table.answered(node, OTHER_ADDRESS, 3.0) is Answered.ELSEWHERE
    assert table.address_of(node) == ADDRESS
    assert table.move(node, OTHER_ADDRESS, ADDRESS, 3.5) is False  # not at that address
    assert table.move(node, ADDRESS, OTHER_ADDRESS, 4.0) is True
    [contact] = table.contacts()
    assert contact.address == OTHER_ADDRESS
    assert contact.failures == 0 and contact.last_seen == 4.0


# ---------------------------------------------------------------------------
# wants


def test_wants() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local, index=159)
    near = in_bucket(local, 30, 1)
    assert table.wants(near) is True  # unknown, bucket has room
    table.add_verified(near, ADDRESS, 0.0)
    assert table.wants(near) is False  # known
    newcomer = in_bucket(local, 159, 0xC0FFEE)
    assert table.wants(newcomer) is False  # full, nobody failing
    assert table.wants(members[0]) is False  # known
    table.failed(members[7], ADDRESS)
    assert table.wants(newcomer) is True  # full, but a contact has failed
    table.touch(members[7], ADDRESS, 99.0)
    assert table.wants(newcomer) is False


# ---------------------------------------------------------------------------
# stale (D42) and candidates_to_verify


def test_stale_returns_only_contacts_not_seen_for_age() -> None:
    local = bytes(KEY_BYTES)
    table = RoutingTable(local)
    old, middle, fresh = (in_bucket(local, i, 1) for i in (159, 100, 20))
    table.add_verified(old, ADDRESS, 0.0)
    table.add_verified(middle, ADDRESS, 50.0)
    table.add_verified(fresh, ADDRESS, 95.0)
    assert [c.id for c in table.stale(100.0, 60.0)] == [old]
    assert sorted(c.id for c in table.stale(100.0, 30.0)) == sorted([old, middle])
    assert table.stale(100.0, 1000.0) == []
    table.touch(old, ADDRESS, 99.0)
    assert table.stale(100.0, 30.0)[0].id == middle
    assert len(table.stale(100.0, 30.0)) == 1


def test_stale_ignores_replacements() -> None:
    local = bytes(KEY_BYTES)
    table, members = full_table(local)
    table.add_verified(in_bucket(local, 159, 0x55), ADDRESS, 0.0)
    table.add_candidate(in_bucket(local, 100, 0x55), ADDRESS, 0.0)
    assert sorted(c.id for c in table.stale(1000.0, 1.0)) == sorted(members)


def test_candidates_to_verify_only_where_the_bucket_has_room() -> None:
    local = bytes(KEY_BYTES)
    table, _members = full_table(local, index=159)
    blocked = in_bucket(local, 159, 0x42)
    table.add_candidate(blocked, ADDRESS, 1.0)
    table.add_verified(in_bucket(local, 159, 0x43), ADDRESS, 1.0)  # verified replacement
    open_candidate = in_bucket(local, 120, 0x42)
    table.add_candidate(open_candidate, ADDRESS, 1.0)
    assert [c.id for c in table.candidates_to_verify()] == [open_candidate]
    # No more than the room left: a bucket with one free slot offers one.
    nearly = bucket_ids(local, 140, K - 1, seed=5)
    for node_id in nearly:
        table.add_verified(node_id, ADDRESS, 2.0)
    extra = [in_bucket(local, 140, r) for r in (1 << 100, 1 << 101, 1 << 102)]
    for node_id in extra:
        table.add_candidate(node_id, ADDRESS, 3.0)
    offered = [c.id for c in table.candidates_to_verify()]
    assert sorted(offered) == sorted([open_candidate, extra[-1]])
    assert all(not c.verified for c in table.candidates_to_verify())


# ---------------------------------------------------------------------------
# Thread safety (smoke)


def test_concurrent_operations_keep_the_table_consistent() -> None:
    local = random.Random(0).randbytes(KEY_BYTES)
    table = RoutingTable(local)
    pool_rng = random.Random(1)
    pool = [pool_rng.randbytes(KEY_BYTES) for _ in range(300)]
    pool += [
        in_bucket(local, pool_rng.randrange(150, 160), pool_rng.getrandbits(160)) for _ in range(60)
    ]
    threads_count = 8
    iterations = 3000
    start = threading.Barrier(threads_count)
    errors: list[BaseException] = []
    finished: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait(timeout=30)
            for step in range(iterations):
                node_id = rng.choice(pool)
                op = rng.randrange(6)
                if op == 0:
                    table.add_verified(node_id, ADDRESS, float(step))
                elif op == 1:
                    table.touch(node_id, ADDRESS, float(step))
                elif op == 2:
                    nodes = table.closest(rng.choice(pool), K)
                    assert len(nodes) == len({n.id for n in nodes})
                elif op == 3:
                    table.failed(node_id, ADDRESS)
                elif op == 4:
                    table.add_candidate(node_id, OTHER_ADDRESS, float(step))
                else:
                    table.candidates_to_verify()
                    table.stale(float(step), 10.0)
            finished.append(seed)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(finished) == list(range(threads_count))
    held = ids_of(table)
    assert len(table) == len(held) == len(set(held))
    assert local not in held
    assert len(table) > 0
    per_bucket: dict[int, int] = {}
    for node_id in held:
        index = table.bucket_index(node_id)
        per_bucket[index] = per_bucket.get(index, 0) + 1
    assert max(per_bucket.values()) <= K
    target = pool[0]
    assert [n.id for n in table.closest(target, K)] == sorted(
        held, key=lambda i: distance(i, target)
    )[:K]
