"""``Config.state_path``: a node saves its id and contacts, and a restarted
node rejoins through them with no bootstrap address. Real nodes on
127.0.0.1; every wait is bounded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cluster import config, free_udp_address, running_cluster, wait_until

import dht
from dht import node as dht_node
from dht import state

pytestmark = pytest.mark.timeout(60)


def saved(path: Path) -> state.SavedState:
    loaded = state.load(path)
    assert loaded is not None
    return loaded


def gone_contact() -> tuple[bytes, tuple[str, int]]:
    """A contact at a port where nothing listens."""
    return dht.Key("gone"), ("127.0.0.1", int(free_udp_address().rsplit(":", 1)[1]))


def test_a_restarted_node_rejoins_from_its_saved_contacts(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    with running_cluster(4) as nodes:
        first = dht.New(config(bootstrap_addresses=[nodes[0].address], state_path=path))
        with first:
            first_id = first.id
            keys = [dht.Key(f"state-{i}") for i in range(5)]
            for key in keys:
                nodes[1].Store(key, key[:4], ttl=60).result(timeout=10)
        kept = saved(path)
        assert kept.node_id == first_id
        assert {address for _, address in kept.contacts} >= {
            dht_node.resolve(node.address, "") for node in nodes
        }

        # No bootstrap address, an empty memory store, a new port: only the
        # saved contacts lead back to the network.
        with dht.New(config(state_path=path)) as again:
            assert again.id == first_id  # the saved id, as local_id was not set
            assert again.stats()["routing-table-size"] >= len(nodes)
            for key in keys:
                assert again.Find(key).result(timeout=10) == [key[:4]]


def test_none_of_the_saved_contacts_answers_then_the_bootstrap_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    state.save(path, state.SavedState(dht.Key("me"), (gone_contact(),)))
    with (
        running_cluster(2) as nodes,
        caplog.at_level(logging.WARNING, "dht"),
        dht.New(
            config(state_path=path, bootstrap_addresses=[nodes[0].address], timeout=0.3)
        ) as node,
    ):
        assert node.id == dht.Key("me")
        assert node.stats()["routing-table-size"] >= 2
    assert "no bootstrap node answered" in caplog.text
    assert "joining through the bootstrap addresses" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00garbage",
        b'{"version": 1}',
        b'{"version": 1, "id": "00", "contacts": []}',
        b'{"version": 1, "id": "' + b"ab" * 20 + b'", "contacts": [{"id": 5, "address": 1}]}',
    ],
    ids=["empty", "binary", "no-id", "short-id", "bad-contact"],
)
def test_a_corrupt_state_file_is_one_warning_and_no_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "dht.state"), dht.New(config(state_path=path)) as node:
        pass
    warnings = [r for r in caplog.records if r.name == "dht.state"]
    assert len(warnings) == 1 and "is not a dht state file" in warnings[0].getMessage()
    assert saved(path).node_id == node.id  # Close wrote a good one in its place


def test_a_missing_state_file_is_an_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    with caplog.at_level(logging.INFO, "dht.state"), dht.New(config(state_path=path)):
        assert not path.exists()
    assert "no saved state at" in caplog.text
    assert path.exists()


def test_saves_periodically_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "SAVE_INTERVAL", 0.05)
    path = tmp_path / "node.json"
    with (
        running_cluster(2) as nodes,
        dht.New(config(state_path=path, bootstrap_addresses=[nodes[0].address])) as node,
    ):
        assert wait_until(lambda: path.exists(), timeout=10)
        first = path.stat().st_mtime_ns
        assert wait_until(lambda: path.stat().st_mtime_ns != first, timeout=10)
        assert len(saved(path).contacts) == node.stats()["routing-table-size"]
    assert [p.name for p in tmp_path.iterdir()] == ["node.json"]  # no temporary left


def test_a_node_that_finds_no_one_keeps_its_saved_contacts(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    gone = (gone_contact(),)
    state.save(path, state.SavedState(dht.Key("me"), gone))
    with dht.New(config(state_path=path, timeout=0.2)) as node:  # alone: no bootstrap
        assert node.stats()["routing-table-size"] == 0
    assert saved(path).contacts == gone


def test_an_unwritable_state_path_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-directory" / "node.json"
    with caplog.at_level(logging.WARNING, "dht"), dht.New(config(state_path=path)):
        pass
    assert "cannot save the node's state" in caplog.text


def test_state_path_must_be_a_path() -> None:
    with pytest.raises(dht.ConfigError, match="state_path"):
        dht.Config(state_path=3)  # type: ignore[arg-type]
