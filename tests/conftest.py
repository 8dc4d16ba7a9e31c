"""Shared fixtures. Helpers that are not fixtures live in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import cluster
import pytest
from helpers import Vector, expected_event, load_vectors, vectors_skip_reason

from dht.wire import Event


@pytest.fixture(scope="session")
def vectors() -> list[Vector]:
    """The Go reference vectors; skips the test when the file is absent."""
    loaded = load_vectors()
    if loaded is None:
        pytest.skip(vectors_skip_reason())
    return loaded


@pytest.fixture(scope="session")
def event_from_vector() -> Callable[[dict[str, Any]], Event]:
    """Builds the expected ``Event`` from a vector's ``event`` object."""
    return expected_event


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_io`` run with each I/O mode (``Config.shared_io``)."""
    if metafunc.definition.get_closest_marker("both_io"):
        metafunc.fixturenames.append("io_mode")
        metafunc.parametrize("io_mode", ["threads", "shared"])


@pytest.fixture(autouse=True)
def _io_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a ``both_io`` test, sets ``shared_io`` in the config of every node
    the cluster helpers start."""
    callspec = getattr(request.node, "callspec", None)
    mode = callspec.params.get("io_mode") if callspec is not None else None
    if mode is None:
        yield
        return
    cluster.DEFAULT_CONFIG["shared_io"] = mode == "shared"
    try:
        yield
    finally:
        cluster.DEFAULT_CONFIG.pop("shared_io", None)
