"""Storage shares (dht.core.shares): a full store, or a full key, is shared
max-min fairly between the networks values come from; the user's own values
keep a reserve no remote network takes; only a value's publisher extends it.
Pure state, time passed in."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dht.core.shares import LOCAL, LOCAL_RESERVE, StorageShares, holding_cost
from dht.keys import Key

T0 = 1_700_000_000 * 10**9
HOUR = 3600 * 10**9
KEY = Key("key")
VALUE = b"v" * 100
COST = holding_cost(KEY, VALUE)


def value(i: int, network: str = "") -> bytes:
    """A distinct 100-byte value (all cost ``COST``)."""
    return (Key(f"{network}/{i}") * 5)[:100]


def fill(shares: StorageShares, network: str, count: int, *, key: bytes | None = None) -> int:
    """Admit up to ``count`` values from ``network``; how many were taken."""
    taken = 0
    for i in range(count):
        k = key if key is not None else Key(f"{network}/{i}")
        if shares.admit(k, value(i, network), network, T0 + HOUR, T0)[0] is None:
            taken += 1
    return taken


def test_any_network_may_use_the_room_there_is() -> None:
    shares = StorageShares(100 * COST, 64)
    assert fill(shares, "198.51.100", 87) == 87  # all of the remote part (7/8)
    assert shares.remote == shares.total == 87 * COST <= shares.remote_capacity
    reason, displaced = shares.admit(Key("one more"), VALUE, "198.51.100", T0 + HOUR, T0)
    assert (reason, displaced) == ("full", [])


def test_a_full_store_takes_a_value_from_a_network_holding_less() -> None:
    shares = StorageShares(80 * COST, 64)
    assert fill(shares, "198.51.100", 100) == 70  # the flood fills the remote part
    reason, displaced = shares.admit(KEY, VALUE, "192.0.2", T0 + HOUR, T0)
    assert reason is None
    assert displaced == [(Key("198.51.100/0"), value(0, "198.51.100"))], "the oldest goes"
    assert shares.usage("192.0.2") == COST
    assert shares.usage("198.51.100") == 69 * COST
    # The flood cannot take it back: its network still holds the most.
    assert shares.admit(Key("again"), VALUE, "198.51.100", T0 + HOUR, T0)[0] == "full"


def test_many_networks_flooding_end_with_equal_shares() -> None:
    shares = StorageShares(1000 * COST, 64)
    rng = random.Random(1)
    networks = [f"10.{i}.0" for i in range(10)]
    for n in range(5000):
        network = rng.choice(networks)
        shares.admit(Key(f"{n}"), value(n), network, T0 + HOUR, T0)
    usages = [shares.usage(network) for network in networks]
    assert sum(usages) == shares.total <= shares.remote_capacity
    assert max(usages) - min(usages) <= 2 * COST, usages
    # A newcomer still gets in, displacing one of the heaviest.
    assert shares.admit(KEY, VALUE, "192.0.2", T0 + HOUR, T0)[0] is None


def test_a_squatted_key_takes_its_owners_value() -> None:
    shares = StorageShares(10**9, 64)
    assert fill(shares, "198.51.100", 40, key=KEY) == 40
    # The key is full at 64; the second network displaces the first one's
    # oldest values down to an even split.
    assert fill(shares, "203.0.113", 40, key=KEY) == 32
    held = list(shares.networks_of(KEY).values())
    assert held.count("198.51.100") == held.count("203.0.113") == 32
    reason, [displaced] = shares.admit(KEY, b"owner", "192.0.2", T0 + HOUR, T0)
    assert reason is None
    assert displaced == (KEY, value(8, "198.51.100")), "the oldest of a heaviest network"
    assert shares.networks_of(KEY)[b"owner"] == "192.0.2"
    # Squatters displace each other's values only down to an even split,
    # and never the owner's single value.
    for i in range(100, 200):
        shares.admit(KEY, value(i, "203.0.113"), "203.0.113", T0 + HOUR, T0)
    held = list(shares.networks_of(KEY).values())
    assert held.count("192.0.2") == 1
    assert abs(held.count("198.51.100") - held.count("203.0.113")) <= 1
    assert shares.admit(KEY, value(300, "198.51.100"), "198.51.100", T0 + HOUR, T0)[0] == (
        "key-full"
    )


def test_the_users_values_keep_their_reserve_and_are_never_displaced() -> None:
    shares = StorageShares(80 * COST, 64)
    assert fill(shares, LOCAL, 5) == 5
    assert fill(shares, "198.51.100", 100) == 70  # remote part: 7/8 of the capacity
    assert shares.remote <= shares.capacity - shares.capacity // LOCAL_RESERVE
    assert fill(shares, "192.0.2", 100) == 35  # half of the flood's room, by displacing it
    assert shares.usage(LOCAL) == 5 * COST
    # The user may use the rest of the capacity, and then displaces remote values.
    assert fill(shares, LOCAL, 20) == 20  # the first five again, and fifteen more
    assert shares.total <= shares.capacity
    assert shares.usage(LOCAL) == 20 * COST


def test_only_the_publisher_extends_a_values_life() -> None:
    """Without signatures the network that first stored a value counts as
    its publisher. Anyone could make someone else's value live 30 days by
    sending its bytes again; now only that network, or the user, can."""
    shares = StorageShares(10**9, 64)
    assert shares.admit(KEY, VALUE, "192.0.2", T0 + HOUR, T0) == (None, [])
    assert shares.admit(KEY, VALUE, "198.51.100", T0 + 2 * HOUR, T0) == ("publisher", [])
    assert shares.admit(KEY, VALUE, "198.51.100", T0 + HOUR, T0) == (None, [])  # as long: kept
    assert shares.admit(KEY, VALUE, "192.0.2", T0 + 2 * HOUR, T0) == (None, [])
    assert shares.admit(KEY, VALUE, LOCAL, T0 + 3 * HOUR, T0) == (None, [])
    assert shares.networks_of(KEY) == {VALUE: LOCAL}
    assert shares.usage("192.0.2") == 0
    # The extension holds: the charge lasts until the latest expiry.
    shares.admit(Key("other"), VALUE, "192.0.2", T0 + 4 * HOUR, T0 + 2 * HOUR + 1)
    assert shares.networks_of(KEY) == {VALUE: LOCAL}
    shares.admit(Key("other"), VALUE, "192.0.2", T0 + 4 * HOUR, T0 + 3 * HOUR)
    assert shares.networks_of(KEY) == {}


def test_expired_values_give_their_room_back() -> None:
    shares = StorageShares(10 * COST, 64)
    for i in range(8):
        assert shares.admit(Key(f"{i}"), VALUE, "198.51.100", T0 + i + 1, T0)[0] is None
    assert shares.admit(KEY, VALUE, "198.51.100", T0 + HOUR, T0)[0] == "full"
    assert shares.admit(KEY, VALUE, "198.51.100", T0 + HOUR, T0 + 3)[0] is None
    assert shares.total == 6 * COST


def test_without_delete_a_full_store_refuses() -> None:
    shares = StorageShares(80 * COST, 2, evict=False)
    assert fill(shares, "198.51.100", 100) == 70
    assert shares.admit(Key("x"), VALUE, "192.0.2", T0 + HOUR, T0) == ("full", [])
    for i in range(3):  # room for three values
        shares.cancel(Key(f"198.51.100/{i}"), value(i, "198.51.100"))
    assert fill(shares, "198.51.100", 2, key=Key("k")) == 2
    # The key holds 2: a network holding fewer under it is refused all the same.
    assert shares.admit(Key("k"), VALUE, "192.0.2", T0 + HOUR, T0) == ("key-full", [])


NETWORKS = ["local", "10.0.0", "10.0.1", "10.0.2", "unproven"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(NETWORKS),
            st.integers(0, 5),  # key
            st.integers(0, 30),  # value
            st.integers(1, 40),  # lifetime left
            st.integers(0, 3),  # time passes
        ),
        max_size=300,
    )
)
def test_invariants_hold_under_any_sequence(
    ops: list[tuple[str, int, int, int, int]],
) -> None:
    """Charges add up; the capacity, the remote part and the per-key count
    hold; a value is displaced only for a network holding less (or the
    user), and never the user's for a remote network."""
    shares = StorageShares(40 * COST, 4)
    now = T0
    held: dict[tuple[bytes, bytes], str] = {}
    for network, k, v, life, wait in ops:
        now += wait
        before_usage = {n: shares.usage(n) for n in NETWORKS}
        key, data = Key(k), value(v)
        reason, displaced = shares.admit(key, data, network, now + life, now)
        current = {
            (kk, vv): n for kk in map(Key, range(6)) for vv, n in shares.networks_of(kk).items()
        }
        for pair in displaced:
            victim = held[pair]
            assert network == LOCAL or (
                victim != LOCAL and before_usage[victim] > before_usage[network]
            )
            assert pair not in current
        if reason is None:
            assert (key, data) in current
        held = current
        assert shares.total == sum(shares.usage(n) for n in NETWORKS) <= shares.capacity
        assert shares.remote == shares.total - shares.usage(LOCAL) <= shares.remote_capacity
        assert all(len(shares.networks_of(Key(i))) <= 4 for i in range(6))
