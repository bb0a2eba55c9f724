"""The pager service with a fake transmitter below the CoAP seam
(`bridge.pager.service.CoapClient`):
the circuit breaker, retries and what a command publishes, without a device or a broker.

The same service against aiocoap and the simulator is in tests/adapter and tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from bridge.coap.client import CoapReply
from bridge.config import PagerSettings
from bridge.contract import models
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound, Outbox
from bridge.errors import UpstreamTimeout, UpstreamUnavailable
from bridge.ops.metrics import Metrics
from bridge.pager.service import PagerService


class FakeTransmitter:
    """Answers each request from `answer(method, path)`, or raises what it returns."""

    def __init__(self, answer: Callable[[str, str], CoapReply | Exception]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,  # noqa: ARG002 - the Protocol's signature
        body: bytes | None = None,  # noqa: ARG002
        etag: bytes | None = None,  # noqa: ARG002
        gate: Callable[[], None] | None = None,
    ) -> CoapReply:
        if gate is not None:
            gate()
        self.sent.append((method, path))
        await asyncio.sleep(0)
        reply = self.answer(method, path)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def observe(
        self,
        path: str,  # noqa: ARG002
        *,
        query: Mapping[str, str | int] | None = None,  # noqa: ARG002
    ) -> AsyncIterator[CoapReply]:
        raise UpstreamUnavailable("not observable")
        yield CoapReply("2.05", b"")  # pragma: no cover - makes this an async generator


def service(
    transmitter: FakeTransmitter, **settings: Any
) -> tuple[PagerService, list[Outbound], Metrics]:
    published: list[Outbound] = []

    async def publish(out: list[Outbound]) -> None:
        published.extend(out)

    metrics = Metrics()
    pager = PagerService(transmitter, publish, Topics(), metrics, PagerSettings(**settings))
    return pager, published, metrics


def outbox(published: list[Outbound]) -> Outbox:
    """A command's outbox that records what the command published."""

    def record(out: list[Outbound]) -> asyncio.Future[None]:
        published.extend(out)  # started at once, as the link does
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return Outbox(record)


def retries(metrics: Metrics) -> float:
    labels = {"upstream": "pager", "operation": "get", "reason": "no_answer"}
    return metrics.registry.get_sample_value("iotbridge_upstream_retries_total", labels) or 0.0


async def test_an_open_circuit_makes_reads_fail_fast() -> None:
    """Before: a read refused by the open circuit was retried until `pager.deadline`, each
    refusal counted as a `no_answer` retry of a request that was never sent."""
    silent = FakeTransmitter(lambda _m, _p: UpstreamTimeout("no answer"))
    pager, published, metrics = service(
        silent, breaker_failures=2, breaker_cooldown=60, deadline=20
    )
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as first:
        await pager.execute(7, models.Get(), outbox(published))
    assert time.monotonic() - started < 2  # two timeouts open the circuit; then no waiting
    assert "circuit open" in first.value.message
    assert len(silent.sent) == 2
    assert retries(metrics) == 2  # the two real timeouts

    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        await pager.execute(7, models.Get(), outbox(published))
    assert time.monotonic() - started < 0.05
    assert len(silent.sent) == 2  # nothing sent while open
    assert retries(metrics) == 2


async def test_a_write_is_never_retried() -> None:
    silent = FakeTransmitter(lambda _m, _p: UpstreamTimeout("no answer"))
    pager, published, _ = service(silent)
    with pytest.raises(UpstreamTimeout):
        await pager.execute(7, models.Page(), outbox(published))
    assert silent.sent == [("PUT", "/v1/sessions")]


async def test_a_read_is_retried_until_answered() -> None:
    session = {"id": "s1", "number": 7, "state": "started", "label": "Ann", "goal": 600}
    answers: list[CoapReply | Exception] = [
        UpstreamTimeout("no answer"),
        UpstreamUnavailable("unreachable"),
        CoapReply("2.05", json.dumps({"sessions": [session]}).encode()),
    ]
    flaky = FakeTransmitter(lambda _m, _p: answers.pop(0))
    pager, published, metrics = service(flaky)
    data = await pager.execute(7, models.Get(), outbox(published))
    assert data["session"]["label"] == "Ann"
    assert flaky.sent == [("GET", "/v1/sessions")] * 3
    assert retries(metrics) == 2


async def test_a_read_gives_up_when_pager_deadline_leaves_no_time() -> None:
    """No retry starts after `pager.deadline`; the error says how often the device was asked,
    so that dispatch parks the command on the dead-letter topic."""
    silent = FakeTransmitter(lambda _m, _p: UpstreamTimeout("no answer"))
    pager, published, metrics = service(silent, deadline=0.5, breaker_failures=100)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as raised:
        await pager.execute(7, models.Get(), outbox(published))
    assert time.monotonic() - started < 0.5
    assert raised.value.attempts == len(silent.sent) > 1
    assert retries(metrics) == len(silent.sent) - 1


async def test_a_start_publishes_the_session_and_its_event() -> None:
    session = {"id": "s1", "number": 7, "state": "started", "label": "Ann", "goal": 600}
    reply = CoapReply("2.01", json.dumps({"sessions": [session]}).encode())
    pager, published, _ = service(FakeTransmitter(lambda _m, _p: reply))
    data = await pager.execute(7, models.Start(label="Ann"), outbox(published))
    assert data["session"]["label"] == "Ann"
    topics = [o.topic for o in published]
    assert "pager/7/session" in topics
    assert "pager/7/event" in topics
    retained = next(o for o in published if o.topic == "pager/7/session")
    assert retained.retain
    assert json.loads(retained.payload)["id"] == "s1"
