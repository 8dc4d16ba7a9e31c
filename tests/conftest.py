"""Shared fixtures. Helpers that are not fixtures live in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
