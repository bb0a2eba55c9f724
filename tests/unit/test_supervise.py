"""A background task that fails is logged, counted and restarted (a loop) or run again at its
next trigger (one-shot work); it never ends the process."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.contract.topics import Topics
from bridge.core import supervise
from bridge.core.outbox import Outbound
from bridge.core.supervise import Background, Health, supervised
from bridge.homeassistant import announcer
from bridge.homeassistant.announcer import HomeAssistant
from bridge.ops.metrics import Metrics
from bridge.site import Site
from tests.support import settings


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


async def _boom() -> None:
    raise RecursionError("maximum recursion depth exceeded")


def _failures(metrics: Metrics, kind: str) -> float:
    return float(metrics.task_failures.labels(kind)._value.get())


async def test_a_one_shot_task_that_fails_is_logged_counted_and_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its traceback once per kind of failure, then one line; never an exception left in a
    task for asyncio to report at garbage collection."""
    metrics = Metrics()
    background = Background("north", metrics)
    for _ in range(2):
        task = background.start("announce", _boom)
        await task
        assert task.get_name() == "announce-north"
        assert task.exception() is None
    assert _failures(metrics, "announce") == 2
    first, second = (r for r in caplog.records if "announce-north" in r.getMessage())
    assert first.levelno == logging.ERROR
    assert first.exc_info is not None
    assert "runs again when next due" in first.getMessage()
    assert second.levelno == logging.WARNING
    assert second.exc_info is None
    assert "failed again (RecursionError)" in second.getMessage()


async def test_an_announcement_that_fails_unexpectedly_is_made_at_the_next_birth(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(announcer, "SETTLE", 0)
    monkeypatch.setattr(announcer, "IDLE_DELAY", 0)
    metrics = Metrics()
    published: list[Outbound] = []
    calls = 0

    async def publish(out: list[Outbound]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in publishing")
        published.extend(out)

    feature = HomeAssistant(
        settings(discovery_enabled="true", pager_numbers="66"),
        Topics(),
        publish,
        background=Background("north", metrics),
    )
    await feature.connected()
    assert feature._task is not None
    await feature._task
    assert published == []
    assert _failures(metrics, "announce") == 1
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "background task announce-north failed" in logged.getMessage()
    assert logged.exc_info is not None

    feature.message(feature.status_topic, b"online")  # Home Assistant's birth: announce again
    await feature._task
    topics = {m.topic for m in published}
    assert any(t.startswith("homeassistant/") and t.endswith("/config") for t in topics)
    assert "pager/66/session" in topics  # and the idle session after it
    assert _failures(metrics, "announce") == 1


async def _after_connect(site: Site) -> None:
    """Run the site's reconnect hook and wait for the tasks it starts."""
    await site._connected()
    mine = {f"republish-{site.name}", f"schedule-refresh-{site.name}"}
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() in mine))


async def test_a_reconnect_whose_work_fails_unexpectedly_leaves_the_site_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Republishing the retained state and reading the configured schedules after a reconnect
    each fail on their own, logged and counted; the next reconnect does both again."""
    metrics = Metrics()
    site = Site("north", settings(), metrics)
    published: list[list[Outbound]] = []
    refreshed: list[None] = []
    failing = True

    async def publish_all(out: list[Outbound]) -> None:
        if failing:
            raise KeyError("a bug in republishing")
        published.append(out)

    async def refresh() -> None:
        if failing:
            raise TypeError("a bug in reading the schedules")
        refreshed.append(None)

    monkeypatch.setattr(site, "publish_all", publish_all)
    monkeypatch.setattr(site.schedules, "refresh", refresh)
    await _after_connect(site)
    assert _failures(metrics, "republish") == 1
    assert _failures(metrics, "schedule-refresh") == 1
    logged = {r.getMessage() for r in caplog.records if r.exc_info is not None}
    assert logged == {
        "background task republish-north failed; it runs again when next due",
        "background task schedule-refresh-north failed; it runs again when next due",
    }

    failing = False
    await _after_connect(site)  # the next reconnect
    assert published == [[]]  # no session to republish, but republished all the same
    assert refreshed == [None]
    assert _failures(metrics, "republish") == 1
