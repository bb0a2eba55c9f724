"""The pager service with a fake transmitter below the CoAP seam
(`bridge.pager.service.CoapClient`):
the circuit breaker, retries, what a command publishes, and how `watch()` follows changes made
by anyone (Observe, the polling fallback), without a device or a broker.

The same service against aiocoap and the simulator is in tests/adapter and tests/e2e.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple

import pytest

from bridge.coap.client import CoapReply
from bridge.config import PagerSettings
from bridge.contract import models
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound, Outbox
from bridge.errors import CircuitOpen, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.ops.metrics import Metrics
from bridge.pager.service import Breaker, PagerService


class Sent(NamedTuple):
    at: float  # time.monotonic()
    method: str
    path: str
    etag: bytes | None


class FakeTransmitter:
    """Answers each request from `answer(method, path)`, or raises what it returns.

    `observe` yields what the test puts in `notifications` (the registration's answer first)
    and raises an exception put there; without `notifications` Observe fails at once.
    """

    def __init__(
        self,
        answer: Callable[[str, str], CoapReply | Exception],
        notifications: asyncio.Queue[CoapReply | Exception] | None = None,
    ) -> None:
        self.answer = answer
        self.notifications = notifications
        self.sent: list[tuple[str, str]] = []
        self.log: list[Sent] = []
        self.observed: list[tuple[str, dict[str, str | int]]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,  # noqa: ARG002 - the Protocol's signature
        body: bytes | None = None,  # noqa: ARG002
        etag: bytes | None = None,
        gate: Callable[[], None] | None = None,
    ) -> CoapReply:
        if gate is not None:
            gate()
        self.sent.append((method, path))
        self.log.append(Sent(time.monotonic(), method, path, etag))
        await asyncio.sleep(0)
        reply = self.answer(method, path)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def observe(
        self, path: str, *, query: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[CoapReply]:
        self.observed.append((path, dict(query or {})))
        if self.notifications is None:
            raise UpstreamUnavailable("not observable")
        while True:
            item = await self.notifications.get()
            if isinstance(item, Exception):
                raise item
            yield item


def service(
    transmitter: FakeTransmitter, breaker: Breaker | None = None, **settings: Any
) -> tuple[PagerService, list[Outbound], Metrics]:
    published: list[Outbound] = []

    async def publish(out: list[Outbound]) -> None:
        published.extend(out)

    metrics = Metrics()
    pager = PagerService(
        transmitter, publish, Topics(), metrics, PagerSettings(**settings), breaker=breaker
    )
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


# -- the breaker, injected -------------------------------------------------------------------


class RecordingBreaker:
    """A `Breaker` that says what it was told, and refuses every request while `refusing`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refusing = False

    def before(self) -> None:
        self.calls.append("before")
        if self.refusing:
            raise CircuitOpen("pager circuit open (test)")

    def recheck(self) -> None:
        self.calls.append("recheck")

    def success(self) -> None:
        self.calls.append("success")

    def failure(self) -> None:
        self.calls.append("failure")

    def release(self) -> None:
        self.calls.append("release")


async def test_each_request_goes_through_the_breaker_it_was_given() -> None:
    answers: list[CoapReply | Exception] = [
        UpstreamTimeout("no answer"),
        CoapReply("4.04", b'{"error":"no such session"}'),  # an answer: the device is up
    ]
    breaker = RecordingBreaker()
    device = FakeTransmitter(lambda _m, _p: answers.pop(0))
    pager, published, _ = service(device, breaker)
    with pytest.raises(UpstreamError, match=r"4\.04: no such session"):
        await pager.execute(7, models.Get(), outbox(published))
    assert breaker.calls == ["before", "recheck", "failure", "before", "recheck", "success"]

    breaker.calls.clear()
    breaker.refusing = True
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        await pager.execute(7, models.Page(), outbox(published))
    assert breaker.calls == ["before"]
    assert len(device.sent) == 2  # the refused request was never sent


# -- watch(): changes made by anyone ---------------------------------------------------------

EMPTY = b'{"sessions":[]}'


def session(number: int, state: str = "started", **fields: Any) -> dict[str, Any]:
    return {"id": f"s{number}", "number": number, "state": state, "goal": 600, **fields}


def sessions(*items: dict[str, Any], **envelope: Any) -> bytes:
    return json.dumps({"sessions": list(items), **envelope}).encode()


def events(published: list[Outbound], number: int) -> list[str]:
    return [json.loads(o.payload)["event"] for o in published if o.topic == f"pager/{number}/event"]


def mode(metrics: Metrics, which: str) -> float | None:
    labels = {"site": "default", "mode": which}
    return metrics.registry.get_sample_value("iotbridge_pager_watch_mode", labels)


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def watching(pager: PagerService) -> AsyncIterator[None]:
    task = asyncio.create_task(pager.watch(), name="pager-watch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_change_made_at_the_console_comes_from_its_notification() -> None:
    notifications: asyncio.Queue[CoapReply | Exception] = asyncio.Queue()
    device = FakeTransmitter(lambda _m, _p: CoapReply("2.05", EMPTY), notifications)
    pager, published, metrics = service(device)
    notifications.put_nowait(CoapReply("2.05", EMPTY, observe=1))  # registered
    async with watching(pager):
        await until(lambda: ("GET", "/v1/sessions") in device.sent)  # the sync after registering
        assert published == []
        console = session(12, label="Bea")
        notifications.put_nowait(CoapReply("2.05", sessions(console), observe=2))
        await until(lambda: bool(events(published, 12)))
    assert device.observed == [("/v1/notify", {"action": "get_sessions"})]
    retained = next(o for o in published if o.topic == "pager/12/session")
    assert retained.retain
    assert json.loads(retained.payload) == console
    event = next(o for o in published if o.topic == "pager/12/event")
    assert not event.retain
    assert json.loads(event.payload) == {"event": "started", "number": 12, "session": console}
    assert mode(metrics, "observe") == 1
    assert mode(metrics, "poll") == 0


async def test_a_change_in_our_reply_and_in_its_notification_is_one_event() -> None:
    started = sessions(session(7, label="Ann"), statistics={"numSessions": 1})
    notifications: asyncio.Queue[CoapReply | Exception] = asyncio.Queue()

    def answer(method: str, _path: str) -> CoapReply:
        return CoapReply("2.01", started) if method == "POST" else CoapReply("2.05", EMPTY)

    device = FakeTransmitter(answer, notifications)
    pager, published, metrics = service(device)
    notifications.put_nowait(CoapReply("2.05", EMPTY, observe=1))
    async with watching(pager):
        await until(lambda: ("GET", "/v1/sessions") in device.sent)
        await pager.execute(7, models.Start(label="Ann"), outbox(published))
        assert events(published, 7) == ["started"]
        # The device notifies observers with the very body it answered with ...
        notifications.put_nowait(CoapReply("2.05", started, observe=2))
        # ... or, another firmware, with the full list: the same session, so no news either.
        full = sessions(session(7, label="Ann"), responseTypes=["sessions"])
        notifications.put_nowait(CoapReply("2.05", full, observe=3))
        # A console change after both: once it is out, both of the above were handled.
        notifications.put_nowait(CoapReply("2.05", sessions(session(8)), observe=4))
        await until(lambda: bool(events(published, 8)))
    assert events(published, 7) == ["started"]
    assert [o.topic for o in published].count("pager/7/session") == 1
    changes = metrics.registry.get_sample_value(
        "iotbridge_pager_notifications_total", {"kind": "change"}
    )
    assert changes == 4  # the registration's answer and the three notifications


@pytest.mark.parametrize(
    ("registration", "observe"),
    [
        (CoapReply("2.05", EMPTY), True),  # answered without registering us (RFC 7641 §4.1)
        (CoapReply("4.05", b""), True),  # refused
        (None, False),  # `pager.observe: false`
    ],
    ids=["not-registered", "refused", "observe-off"],
)
async def test_without_observe_the_service_polls_at_poll_interval(
    registration: CoapReply | None, observe: bool
) -> None:
    interval = 0.02
    listed: list[dict[str, Any]] = []

    def answer(_method: str, _path: str) -> CoapReply:
        return CoapReply("2.05", sessions(*listed), etag=b"v%d" % len(listed))

    notifications: asyncio.Queue[CoapReply | Exception] = asyncio.Queue()
    if registration is not None:
        notifications.put_nowait(registration)
    device = FakeTransmitter(answer, notifications)
    pager, published, metrics = service(device, observe=observe, poll_interval=interval)
    async with watching(pager):
        await until(lambda: len(device.log) >= 3)
        listed.append(session(9))  # made at the console, between two polls
        await until(lambda: bool(events(published, 9)))
        polls = len(device.log)
        await until(lambda: len(device.log) >= polls + 3)
    assert len(device.observed) == (1 if observe else 0)  # not tried again within a minute
    assert {(s.method, s.path) for s in device.log} == {("GET", "/v1/sessions")}
    gaps = [b.at - a.at for a, b in itertools.pairwise(device.log)]
    assert min(gaps) >= interval * 0.9  # the loop's clock may round a little early
    # Each poll after the first sends the ETag of the list it last read.
    assert device.log[0].etag is None
    assert all(s.etag in {b"v0", b"v1"} for s in device.log[1:])
    assert events(published, 9) == ["started"]  # once, however often it is listed
    assert mode(metrics, "poll") == 1
    assert mode(metrics, "observe") == 0
