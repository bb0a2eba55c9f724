"""Fixtures shared by every tier: a real Mosquitto on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.dev.mosquitto import Mosquitto


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A fresh Mosquitto for one test, with the settings the bridge needs."""
    with Mosquitto() as instance:
        yield instance
