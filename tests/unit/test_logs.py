"""Logs as an operator reads them: text or JSON lines, a correlation id, never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bridge import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield None
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_the_correlation_id_and_no_secret(
    restore_logging: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "json", ["hunter22-secret"])
    token = logs.correlation_id.set("tx-42")
    try:
        logging.getLogger("bridge.test").warning("login with %s failed", "hunter22-secret")
    finally:
        logs.correlation_id.reset(token)
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "login with *** failed"
    assert entry["correlation_id"] == "tx-42"
    assert entry["level"] == "warning"
    assert entry["logger"] == "bridge.test"


def test_text_format_is_readable(
    restore_logging: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "text", [])
    logging.getLogger("bridge.test").info("hello %d", 5)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("INFO    bridge.test [-] hello 5")


def test_budget_drops_past_its_count_and_says_how_many() -> None:
    now = [100.0]
    budget = logs.Budget(3, 60.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 61
    assert budget.take() == 2  # the first line of the new minute says two were dropped
    assert budget.take() == 0
