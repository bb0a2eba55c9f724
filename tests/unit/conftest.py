"""Unit-tier fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For a test that configures logging (`bridge.ops.logs.setup`): the root logger's
    handlers and level as they were, afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield None
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
