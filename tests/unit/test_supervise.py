"""A background task that fails is logged, counted and restarted; it never ends the process."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.core import supervise
from bridge.core.supervise import Health, supervised
from bridge.ops.metrics import Metrics


async def test_a_failing_task_is_restarted_with_backoff_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervise, "FIRST_DELAY", 0.01)
    metrics, health = Metrics(), Health()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise RecursionError("maximum recursion depth exceeded")  # as a hostile reply did

    async with asyncio.timeout(5):
        await supervised("pager-watch-north", "pager-watch", flaky, metrics, health)
    assert runs == 5  # restarted four times, then it returned
    assert metrics.task_failures.labels("pager-watch")._value.get() == 4
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 4
    assert "pager-watch-north failed" in failures[0].getMessage()
    assert failures[0].exc_info is not None  # with its traceback
    assert health.failing() == []  # it ended well


async def test_a_task_that_keeps_failing_is_named_on_readyz(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "FIRST_DELAY", 0.01)
    health = Health()

    third = asyncio.Event()
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
        raise ValueError("bug")

    task = asyncio.create_task(supervised("observer-south", "observer", broken, Metrics(), health))
    async with asyncio.timeout(5):
        await third.wait()
    await asyncio.sleep(0)  # the third failure is recorded as the task gets control back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert health.failing() == ["observer-south"]
