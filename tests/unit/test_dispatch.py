"""Dispatch policy with a fake link below the MQTT seam: fairness, admission, contained failures.

The same behaviour through a real broker and transmitter is in tests/e2e and, under floods, in
tests/faults/test_hostile_publishers.py; here the order of execution can be pinned exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import paho.mqtt.client as paho
import pytest

from bridge.config import LimitSettings, PagerSettings
from bridge.contract import models
from bridge.contract.topics import Topics
from bridge.core.dispatch import LOG_BUDGET, Dispatcher, Failed, TokenBucket
from bridge.core.outbox import Outbound, Outbox
from bridge.core.routing import Request, Router
from bridge.errors import Overloaded
from bridge.mqtt.link import Inbound
from bridge.ops.metrics import Metrics


class FakeLink:
    """Publishes succeed at once; what was published and acknowledged is recorded."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], int]] = []
        self.acked: list[int] = []

    def ack(self, inbound: Inbound) -> None:
        self.acked.append(inbound.mid)

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,  # noqa: ARG002 - the Link protocol's signature
        correlation: bytes | None = None,  # noqa: ARG002
    ) -> Awaitable[None]:
        self.published.append((topic, json.loads(payload), 1))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def publish_once(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation: bytes | None = None,  # noqa: ARG002 - the Link protocol's signature
    ) -> bool:
        self.published.append((topic, json.loads(payload), 0))
        return True

    def results(self) -> dict[str, dict[str, Any]]:
        return {str(body.get("transaction")): body for _, body, _ in self.published}


_mids = iter(range(1, 1_000_000))


def inbound(topic: str, body: dict[str, Any] | bytes, qos: int = 1) -> Inbound:
    message = paho.MQTTMessage(next(_mids), topic.encode())
    message.payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    message.qos = qos
    return Inbound(topic, message, generation=1)


class Transmitter:
    """An `execute` that records the order commands start in and finishes them on demand."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, request: Request, _box: Outbox) -> Any:
        self.started.append(str(request.command.transaction))
        await self.release.wait()
        return {"done": True}


def dispatcher(
    execute: Any,
    link: FakeLink | None = None,
    metrics: Metrics | None = None,
    failed: Failed | None = None,
    **limits: Any,
) -> tuple[Dispatcher, FakeLink, Metrics]:
    settings = LimitSettings(**limits)
    link = link or FakeLink()
    metrics = metrics or Metrics()
    router = Router(Topics(), PagerSettings(), settings)
    if failed is None:
        return Dispatcher(router, link, execute, metrics, settings), link, metrics
    dispatch = Dispatcher(router, link, execute, metrics, settings, failed=failed)
    return dispatch, link, metrics


def reached(metrics: Metrics, limit: str) -> float:
    value = metrics.registry.get_sample_value("iotbridge_limits_reached_total", {"limit": limit})
    return value or 0.0


def count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "iotbridge_commands_total", {"route": "pager", "action": "page", "outcome": outcome}
    )
    return value or 0.0


async def test_waiting_lanes_take_turns() -> None:
    """One command at a time: a publisher with five commands for pager 1 does not make pager 2
    and 3 wait for all five; each lane gets one command per turn."""
    transmitter = Transmitter()
    dispatch, link, _ = dispatcher(transmitter, max_in_flight=1)
    for n in range(5):
        await dispatch.submit(inbound("pager/1/action", {"action": "page", "transaction": f"a{n}"}))
    await dispatch.submit(inbound("pager/2/action", {"action": "page", "transaction": "b"}))
    await dispatch.submit(inbound("pager/3/action", {"action": "page", "transaction": "c"}))
    transmitter.release.set()
    assert await dispatch.drain(5)
    assert transmitter.started == ["a0", "b", "c", "a1", "a2", "a3", "a4"]
    assert len(link.acked) == 7


async def test_a_full_lane_answers_overloaded_at_once() -> None:
    transmitter = Transmitter()
    dispatch, link, metrics = dispatcher(transmitter, lane_depth=3)
    for n in range(10):
        await dispatch.submit(inbound("pager/4/action", {"action": "page", "transaction": f"t{n}"}))
    await asyncio.sleep(0.01)
    refused = {t for t, r in link.results().items() if r["status"] == "error"}
    assert refused == {f"t{n}" for n in range(3, 10)}  # answered before the lane moved
    message = link.results()["t3"]["error"]["message"]
    assert "3 commands already wait for pager 4" in message
    transmitter.release.set()
    assert await dispatch.drain(5)
    assert transmitter.started == ["t0", "t1", "t2"]
    assert count(metrics, "overloaded") == 7
    assert reached(metrics, "lane_depth") == 7
    assert len(link.acked) == 10  # refused is answered and acknowledged, never left hanging


async def test_the_site_rate_limit_answers_overloaded() -> None:
    transmitter = Transmitter()
    transmitter.release.set()
    dispatch, link, metrics = dispatcher(transmitter, rate=1.0, burst=5)
    for n in range(8):
        await dispatch.submit(
            inbound(f"pager/{n + 1}/action", {"action": "page", "transaction": f"r{n}"})
        )
    assert await dispatch.drain(5)
    statuses = [link.results()[f"r{n}"]["status"] for n in range(8)]
    assert statuses == ["ok"] * 5 + ["error"] * 3
    assert "at most 1 commands a second (bursts of 5)" in link.results()["r7"]["error"]["message"]
    assert count(metrics, "overloaded") == 3
    assert reached(metrics, "rate") == 3


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] = 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3
    assert all(TokenBucket(0, 1).take() for _ in range(1000))  # 0: no limit


async def test_a_shed_qos0_command_is_answered_at_qos0_and_counted() -> None:
    dispatch, link, metrics = dispatcher(Transmitter())
    command = inbound("pager/5/action", {"action": "page", "transaction": "q0"}, qos=0)
    dispatch.shed(command)
    assert link.published == [("pager/5/action/result", link.results()["q0"], 0)]
    assert link.results()["q0"]["error"]["code"] == "overloaded"
    assert count(metrics, "overloaded") == 1
    assert reached(metrics, "qos0_inbox") == 1
    assert await dispatch.drain(1)


async def test_an_oversized_payload_is_answered_from_its_size() -> None:
    dispatch, link, metrics = dispatcher(Transmitter(), max_payload=1024)
    message = paho.MQTTMessage(1, b"pager/6/action")
    message.payload = b'{"action":"page","label":"' + b"x" * 5000 + b'"}'
    message.qos = 1
    big = Inbound("pager/6/action", message, generation=1, max_payload=1024)
    assert big.payload == b""  # not kept
    await dispatch.submit(big)
    assert await dispatch.drain(1)
    assert reached(metrics, "max_payload") == 1
    ((topic, result, _),) = link.published
    assert topic == "pager/6/action/result"
    assert result["error"] == {
        "code": "invalid_payload",
        "message": "payload is 5028 bytes; the limit is 1024",
    }


async def test_deep_nesting_is_bad_input_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    """4 KB of brackets exhausts msgspec's recursion: an `invalid_payload` answer, no
    traceback in the log (it used to be an ERROR with one per message, and `internal_error`)."""
    dispatch, link, _ = dispatcher(Transmitter())
    for body in (
        b'{"action":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 5000,
        b'{"transaction":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        await dispatch.submit(inbound("pager/7/action", body))
    assert await dispatch.drain(1)
    codes = [result["error"]["code"] for _, result, _ in link.published]
    assert codes == ["invalid_payload"] * 3
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_an_unexpected_failure_is_an_upstream_error_logged_once_in_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(_request: Request, _box: Outbox) -> Any:
        raise KeyError("reply field")

    dispatch, link, _ = dispatcher(broken)
    for n in range(3):
        await dispatch.submit(
            inbound(f"pager/{n + 1}/action", {"action": "page", "transaction": f"k{n}"})
        )
    assert await dispatch.drain(1)
    errors = [result["error"] for _, result, _ in link.published]
    assert {e["code"] for e in errors} == {"upstream_error"}  # the documented vocabulary
    assert "KeyError" in errors[0]["message"]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1


async def test_a_retry_with_the_same_transaction_is_answered_from_the_first_outcome() -> None:
    transmitter = Transmitter()
    transmitter.release.set()
    dispatch, link, metrics = dispatcher(transmitter)
    body = {"action": "page", "transaction": "once"}
    await dispatch.submit(inbound("pager/3/action", body))
    assert await dispatch.drain(1)
    await dispatch.submit(inbound("pager/3/action", body))  # the client's retry
    assert await dispatch.drain(1)
    assert transmitter.started == ["once"]  # carried out once
    answers = [r for _, r, _ in link.published if r.get("transaction") == "once"]
    assert answers == [answers[0], answers[0]]
    assert count(metrics, "duplicate") == 1


async def test_stale_and_retained_commands_are_expired_not_carried_out() -> None:
    transmitter = Transmitter()
    transmitter.release.set()
    dispatch, link, metrics = dispatcher(transmitter, max_age=60)
    old = {"action": "page", "transaction": "old", "sent_at": 1_000_000_000}
    await dispatch.submit(inbound("pager/4/action", old))
    retained = inbound("pager/4/action", {"action": "page", "transaction": "kept"})
    retained.retain = True
    await dispatch.submit(retained)
    assert await dispatch.drain(1)
    assert transmitter.started == []
    results = link.results()
    assert results["old"]["error"]["code"] == "expired"
    assert "sent" in results["old"]["error"]["message"]
    assert results["kept"]["error"]["code"] == "expired"
    assert len(link.acked) == 2
    # Counted apart: a retained command is a publisher's mistake to find, not a slow queue.
    assert count(metrics, "expired") == 1
    assert count(metrics, "retained") == 1


async def test_a_redelivery_to_a_full_lane_meets_its_first_delivery() -> None:
    """After a reconnect the broker delivers again (DUP) what it delivered before. However full
    the lane or spent the rate, the redelivery is not refused with a second, different result:
    it waits behind its first delivery and is only acknowledged once that is answered."""
    transmitter = Transmitter()
    dispatch, link, metrics = dispatcher(transmitter, lane_depth=3, rate=1, burst=3)
    first = inbound("pager/8/action", {"action": "page", "transaction": "first"})
    await dispatch.submit(first)
    await dispatch.submit(inbound("pager/8/action", {"action": "page", "transaction": "b"}))
    await dispatch.submit(inbound("pager/8/action", {"action": "page", "transaction": "c"}))
    again = inbound("pager/8/action", {"action": "page", "transaction": "first"})
    again.dup = True
    await dispatch.submit(again)
    transmitter.release.set()
    assert await dispatch.drain(1)
    answers = [r for t, r, _ in link.published if r.get("transaction") == "first"]
    assert [a["status"] for a in answers] == ["ok"]
    assert transmitter.started.count("first") == 1
    assert count(metrics, "overloaded") == 0
    assert count(metrics, "redelivered") == 1
    assert len(link.acked) == 4


async def test_past_max_queued_submit_waits_for_room() -> None:
    """Back-pressure: the link's reader awaits submit(), so a full bridge stops reading."""
    transmitter = Transmitter()
    dispatch, _, _ = dispatcher(transmitter, max_queued=2)
    await dispatch.submit(inbound("pager/1/action", {"action": "page", "transaction": "a"}))
    await dispatch.submit(inbound("pager/2/action", {"action": "page", "transaction": "b"}))
    third = asyncio.ensure_future(
        dispatch.submit(inbound("pager/3/action", {"action": "page", "transaction": "c"}))
    )
    await asyncio.sleep(0.05)
    assert not third.done()  # waits: nothing read past the bound
    transmitter.release.set()
    async with asyncio.timeout(1):
        await third
    assert await dispatch.drain(1)
    assert sorted(transmitter.started) == ["a", "b", "c"]


def announce(topic: str, action: str | None, error: models.ErrorInfo) -> list[Outbound]:
    """A `failed` hook: one message per failure, on `<topic>/failed`."""
    body = {"action": action, "code": error.code}
    return [Outbound(f"{topic}/failed", json.dumps(body).encode(), False)]


async def test_every_failed_command_is_announced_ahead_of_its_result() -> None:
    """However early a command is refused, `failed` is told (the site makes it the pager's
    `error` event), and its messages go out before the result; a retry answered from the
    deduplication window is not a new failure, and a shed QoS 0 command costs one answer."""

    async def refusing(_request: Request, _box: Outbox) -> Any:
        raise Overloaded("no")

    dispatch, link, _ = dispatcher(refusing, failed=announce, rate=1000, burst=1000)
    page = {"action": "page", "transaction": "t1"}
    await dispatch.submit(inbound("pager/1/action", page))  # carried out, failed
    await dispatch.submit(inbound("pager/2/action", b"{not json"))  # unreadable
    await dispatch.submit(inbound("pager/3/action", {"action": "fly", "transaction": "t3"}))
    retained = inbound("pager/4/action", {"action": "clear", "transaction": "t4"})
    retained.retain = True
    await dispatch.submit(retained)
    assert await dispatch.drain(1)
    await dispatch.submit(inbound("pager/1/action", page))  # a retry: its first outcome
    await dispatch.submit(inbound("pager/1/action", {"action": "clear", "transaction": "t1"}))
    dispatch.shed(inbound("pager/5/action", {"action": "page", "transaction": "t5"}, qos=0))
    assert await dispatch.drain(1)
    topics = [topic for topic, _, _ in link.published]
    announced = [(topic, body) for topic, body, _ in link.published if topic.endswith("/failed")]
    assert sorted(announced, key=lambda a: a[0]) == [
        ("pager/1/action/failed", {"action": "page", "code": "overloaded"}),
        ("pager/1/action/failed", {"action": "clear", "code": "invalid_payload"}),  # reused key
        ("pager/2/action/failed", {"action": None, "code": "invalid_payload"}),
        ("pager/3/action/failed", {"action": None, "code": "unknown_action"}),
        ("pager/4/action/failed", {"action": "clear", "code": "expired"}),
    ]
    # pager 1: the failure, its retry (not announced again), the reused key (announced).
    ones = [t for t in topics if t.startswith("pager/1/")]
    assert ones == [
        "pager/1/action/failed",
        "pager/1/action/result",
        "pager/1/action/result",
        "pager/1/action/failed",
        "pager/1/action/result",
    ]
    for n in (2, 3, 4):
        assert topics.index(f"pager/{n}/action/failed") < topics.index(f"pager/{n}/action/result")
    assert [t for t in topics if t.startswith("pager/5/")] == ["pager/5/action/result"]


class SlowLink(FakeLink):
    """Every publish is acknowledged only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[None]] = []

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> Awaitable[None]:
        super().publish_soon(topic, payload, retain=retain, correlation=correlation)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


async def test_the_ack_waits_for_the_commands_publishes_which_precede_its_result() -> None:
    async def starting(_request: Request, box: Outbox) -> Any:
        box.send([Outbound("pager/9/session", b'{"state":"started"}', True)])
        box.send([Outbound("pager/9/event", b'{"event":"started"}', False)])
        return {"started": True}

    link = SlowLink()
    dispatch, _, _ = dispatcher(starting, link=link)
    await dispatch.submit(inbound("pager/9/action", {"action": "start", "transaction": "s"}))
    await asyncio.sleep(0.05)  # the command runs and its three publishes start
    assert [t for t, _, _ in link.published] == [
        "pager/9/session",
        "pager/9/event",
        "pager/9/action/result",
    ]
    session, event, result = link.pending
    result.set_result(None)
    event.set_result(None)
    await asyncio.sleep(0.05)
    assert link.acked == []  # the session is not out yet: not acknowledged
    session.set_result(None)
    assert await dispatch.drain(1)
    assert len(link.acked) == 1


async def test_a_flood_of_bad_input_costs_the_log_a_budget_not_a_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line per failed command, within the site's budget (LOG_BUDGET a minute): 500
    unreadable commands leave at most that many lines, and each is still answered."""
    caplog.set_level(logging.INFO, logger="bridge.core.dispatch")
    dispatch, link, _ = dispatcher(Transmitter())
    for n in range(500):
        await dispatch.submit(inbound(f"pager/{n % 50 + 1}/action", b"{not json"))
    assert await dispatch.drain(1)
    lines = [r for r in caplog.records if "failed: invalid_payload" in r.getMessage()]
    assert 0 < len(lines) <= LOG_BUDGET
    assert len(link.published) == 500
