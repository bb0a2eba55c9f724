"""Logs as an operator reads them: text or JSON lines, a correlation id, never a secret."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.ops import logs


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


def test_text_lines_cannot_be_forged(
    restore_logging: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newline in upstream text (Sensaphone's result.message) or in a transaction used to
    start a line of its own that looked like the bridge's."""
    logs.configure("info", "text", [])
    forged = "bad\n2026-12-05 01:00:00,000 ERROR   bridge.app [-] fake\r\x1b[2J"
    token = logs.correlation_id.set("tx\nEVIL")
    try:
        logging.getLogger("bridge.test").warning("upstream said: %s", forged)
    finally:
        logs.correlation_id.reset(token)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        r"[tx\nEVIL] upstream said: bad\n"
        r"2026-12-05 01:00:00,000 ERROR   bridge.app [-] fake\r\x1b[2J"
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_scrubbed_too(
    restore_logging: object, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    logs.configure("info", fmt, ["s3cret-site-b", "s3cret"])
    try:
        raise ValueError("login as admin:s3cret-site-b refused")  # noqa: TRY301
    except ValueError:
        logging.getLogger("bridge.test").exception("upstream failed for s3cret")
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "admin:***" in err
    assert "ValueError" in err
