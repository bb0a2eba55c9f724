"""The bridge against a transmitter whose replies are shaped otherwise than our simulator's.

Our simulator was written from the same reading of the vendor's docs as the bridge, so it shares
the bridge's misreadings. This device is a few lines on aiocoap's server, answering as a real
T7470 might: numbers as text, fields nobody documented, optional fields left out, and settings
shaped as the vendor documents them (`statisticsClearMark` an hour of the day, a number).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import aiocoap.resource
import pytest
from aiocoap.numbers.codes import Code

from bridge.app import Bridge
from bridge.config import Settings
from bridge.dev.mosquitto import free_port
from tests.support import Peer, http_get, running

pytestmark = pytest.mark.broker

SESSION = {
    "id": "48",  # text where the docs say a number
    "number": "66",
    "sessionSequence": "3",
    "state": "started",
    "partySize": "4",
    "label": 12345,  # a number where the docs say text
    "buzzerColor": "amber",  # a field the docs do not know
    # no goalInSeconds, created, started, notified: all optional
}
STATISTICS = {"guestsServed": "17", "percentLate": 12.5, "numSessions": "40", "shiftId": 3}
SETTINGS = {
    "datetime": "2026-12-05T10:00:00",
    "systemId": "7",
    "defaultTargetGoal": 600,
    "statisticsClearMark": 4,
    "ledBrightness": 80,
}


class Answer(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, body: Callable[[Any], dict[str, Any]]) -> None:
        super().__init__()
        self._body = body

    async def render(self, request: Any) -> Any:
        body = json.dumps(self._body(request), separators=(",", ":")).encode()
        code = Code.CREATED if request.code == Code.POST else Code.CONTENT
        return aiocoap.Message(code=code, payload=body, content_format=50)


class Sessions:
    """No session until one is started; then GETs report it, one sequence number on."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, request: Any) -> dict[str, Any]:
        if request.code == Code.POST:
            self.started = True
            sessions = [SESSION]
        else:
            sessions = [{**SESSION, "sessionSequence": 4}] if self.started else []
        return {
            "responseTypes": ["sessions", "statistics"],
            "globalSessionSequence": "99",
            "sessions": sessions,
            "statistics": STATISTICS,
            "powerSource": "mains",
        }


def _settings(_request: Any) -> dict[str, Any]:
    return {"responseTypes": ["settings"], "settings": SETTINGS}


@pytest.fixture
async def other_device() -> AsyncIterator[str]:
    site = aiocoap.resource.Site()
    site.add_resource(("v1", "sessions"), Answer(Sessions()))
    site.add_resource(("v1", "settings"), Answer(_settings))
    port = free_port(socket.SOCK_DGRAM)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["simplesocketserver"]
    )
    try:
        yield f"coap://127.0.0.1:{port}"
    finally:
        await context.shutdown()


async def test_replies_shaped_otherwise_work_and_pass_through(
    bridge_settings: Callable[..., Settings], peer: Peer, other_device: str
) -> None:
    settings = bridge_settings(pager_url=other_device, pager_observe="false")
    async with running(Bridge(settings)) as bridge:
        started = await peer.request("pager/66/action", {"action": "start"})
        got = await peer.request("pager/66/action", {"action": "get"})
        base = await peer.request("pager/base/action", {"action": "get_settings"})
        retained = await peer.wait_for(lambda m: m[0] == "pager/66/session" and m[1] != b"")
        event = await peer.wait_for(lambda m: m[0] == "pager/66/event")
        statistics = await peer.wait_for(
            lambda m: m[0] == "pager/statistics" and b'"activeSessions":1' in m[1]
        )
        metrics = await http_get(bridge, "/metrics")

    assert started["status"] == "ok", started
    assert started["data"]["session"] == SESSION  # as the device sent it, unknown field too
    assert got["status"] == "ok", got
    assert base["status"] == "ok", base
    assert base["data"] == SETTINGS  # statisticsClearMark a number, as documented
    assert json.loads(retained[1]) == SESSION
    assert json.loads(event[1]) == {"event": "started", "number": 66, "session": SESSION}
    assert json.loads(statistics[1]) == {**STATISTICS, "activeSessions": 1}
    assert 'iotbridge_pager_guests_served{site="default"} 17.0' in metrics
    assert 'iotbridge_pager_active_sessions{site="default"} 1.0' in metrics


class Counted(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """A plain resource (no Observe) that counts its requests."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__()
        self.body = json.dumps(body, separators=(",", ":")).encode()
        self.requests = 0

    async def render_get(self, _request: Any) -> Any:
        self.requests += 1
        return aiocoap.Message(code=Code.CONTENT, payload=self.body, content_format=50)


async def test_a_device_that_never_offers_observe_is_polled_not_stormed(
    bridge_settings: Callable[..., Settings], peer: Peer
) -> None:
    """RFC 7641 §4.1: a device may answer the registration with a plain 2.05. The bridge then
    polls at pager.poll_interval and tries Observe again no faster than that (it once looped
    without a pause: ~20,000 requests in 12 s from an idle bridge)."""
    empty = {"responseTypes": ["sessions"], "sessions": [], "statistics": STATISTICS}
    notify, sessions = Counted(empty), Counted(empty)
    site = aiocoap.resource.Site()
    site.add_resource(("v1", "notify"), notify)
    site.add_resource(("v1", "sessions"), sessions)
    port = free_port(socket.SOCK_DGRAM)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["simplesocketserver"]
    )
    try:
        settings = bridge_settings(pager_url=f"coap://127.0.0.1:{port}", pager_poll_interval="0.5")
        async with running(Bridge(settings)) as bridge:
            await asyncio.sleep(3)
            metrics = await http_get(bridge, "/metrics")
    finally:
        await context.shutdown()
    assert notify.requests <= 2, notify.requests  # one registration, answered without Observe
    assert 4 <= sessions.requests <= 10, sessions.requests  # polled every 0.5 s
    assert 'iotbridge_pager_watch_mode{mode="poll",site="default"} 1.0' in metrics


class Hostile(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """Answers everything with JSON nested 100,000 deep (msgspec raises RecursionError on it)."""

    BODY = b'{"sessions":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    async def render(self, _request: Any) -> Any:
        return aiocoap.Message(code=Code.CONTENT, payload=self.BODY, content_format=50)


async def test_a_reply_nested_too_deep_is_refused_not_fatal(
    bridge_settings: Callable[..., Settings], peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    """On plain UDP anything on the path can send this; it once ended `iotbridge run`."""
    site = aiocoap.resource.Site()
    site.add_resource(("v1", "sessions"), Hostile())
    port = free_port(socket.SOCK_DGRAM)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["simplesocketserver"]
    )
    try:
        settings = bridge_settings(
            pager_url=f"coap://127.0.0.1:{port}", pager_observe="false", pager_poll_interval="0.2"
        )
        async with running(Bridge(settings)) as bridge:
            result = await peer.request("pager/66/action", {"action": "start"})
            await asyncio.sleep(1)  # polls meanwhile
            assert bridge.ready
            readyz = await http_get(bridge, "/readyz")
    finally:
        await context.shutdown()
    assert result["status"] == "ok"  # the device did it; its answer was unreadable
    assert "nested too deeply" in result["data"]["unreadable_reply"]
    assert readyz == "ready\n"
    assert any("nested too deeply" in r.getMessage() for r in caplog.records)
