"""Schedules end to end: MQTT in, Sensaphone REST to the simulator (both API modes), MQTT out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.e2e.conftest import SCHEDULE_28487, sensaphone_env
from tests.support import Peer, http_get

pytestmark = pytest.mark.broker

PASSWORD = "demo-password"


@pytest.fixture
def sensaphone() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator(session_lifetime=3600) as sim:
        yield sim


@pytest.fixture(params=["json", "uri"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def schedule_bridge(
    bridge_at: Callable[..., AbstractAsyncContextManager[Bridge]],
    sensaphone: SensaphoneSimulator,
    mode: str,
) -> Callable[..., AbstractAsyncContextManager[Bridge]]:
    def make(**env: str) -> AbstractAsyncContextManager[Bridge]:
        settings = {
            "sensaphone_mode": mode,
            "sensaphone_schedules": SCHEDULE_28487,
            "sensaphone_deadline": "5",
        }
        return bridge_at(**sensaphone_env(sensaphone, **settings | env))

    return make


def ranges_on(peer: Peer, schedule_id: int) -> list[dict[str, Any]]:
    retained = peer.payloads(f"schedule/{schedule_id}/timeranges")
    return list(retained[-1]["timeranges"]) if retained else []


async def test_every_operation(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    topic = "schedule/28487/timerange"
    async with schedule_bridge():
        read = await peer.request(topic, {"action": "read"})
        assert read["status"] == "ok", read
        assert [r["range_id"] for r in read["data"]["timeranges"]] == [58381, 51587]
        assert read["data"]["timeranges"][1]["interval_decoded"]["days"] == ["sun", "mon", "tue"]

        weekdays = {"days": ["mon", "tue", "wed", "thu", "fri"]}
        created = await peer.request(
            topic, {"action": "create", "start": "08:00", "end": "12:00", "interval": weekdays}
        )
        assert created["status"] == "ok", created
        new = [
            r
            for r in created["data"]["timeranges"]
            if r["start"] == "08:00" and r["end"] == "12:00"
        ]
        assert len(new) == 1
        assert new[0]["interval"] == 62
        range_id = new[0]["range_id"]
        await peer.wait_for(
            lambda m: m[0] == "schedule/28487/timeranges" and str(range_id).encode() in m[1]
        )
        assert range_id in [r["range_id"] for r in ranges_on(peer, 28487)]

        updated = await peer.request(
            topic, {"action": "update", "range_id": range_id, "interval": 65, "end": "13:00"}
        )
        assert updated["status"] == "ok", updated
        mine = next(r for r in ranges_on(peer, 28487) if r["range_id"] == range_id)
        assert (mine["end"], mine["interval"]) == ("13:00", 65)
        assert mine["interval_decoded"]["days"] == ["sun", "sat"]

        deleted = await peer.request(topic, {"action": "delete", "range_id": range_id})
        assert deleted["status"] == "ok", deleted
        assert range_id not in [r["range_id"] for r in ranges_on(peer, 28487)]
    assert sensaphone.ranges_created == 1
    assert sensaphone.logins == 1


async def test_contact_schedule_from_the_payload(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]], peer: Peer
) -> None:
    async with schedule_bridge():
        read = await peer.request(
            "schedule/300/timerange", {"action": "read", "user_id": 55, "contact_id": 66}
        )
        assert read["status"] == "ok", read
        assert [r["range_id"] for r in read["data"]["timeranges"]] == [70001]
        missing = await peer.request("schedule/301/timerange", {"action": "read"})
        assert missing["error"]["code"] == "invalid_payload"
        assert "no configured parent" in missing["error"]["message"]


async def test_session_expiry_logs_in_again_once(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    async with schedule_bridge() as bridge:
        assert (await peer.request("schedule/28487/timerange", "read"))["status"] == "ok"
        sensaphone.expire_sessions()
        assert (await peer.request("schedule/28487/timerange", "read"))["status"] == "ok"
        assert sensaphone.logins == 2
        body = await http_get(bridge, "/metrics")
        assert 'iotbridge_sensaphone_logins_total{kind="expired",outcome="ok"} 1.0' in body


async def test_wrong_password_is_auth_failed_without_a_login_loop(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-123"
    async with schedule_bridge(sensaphone_password=wrong) as bridge:
        for _ in range(3):
            result = await peer.request("schedule/28487/timerange", "read")
            assert result["error"]["code"] == "auth_failed", result
        assert sensaphone.logins == 1
        body = await http_get(bridge, "/metrics")
    seen = caplog.text + body + json.dumps([m[1].decode() for m in peer.messages])
    assert wrong not in seen
    assert PASSWORD not in seen


async def test_server_errors_and_throttling_are_retried(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    async with schedule_bridge() as bridge:
        sensaphone.fail_next(2, status=500)
        assert (await peer.request("schedule/28487/timerange", "read"))["status"] == "ok"
        sensaphone.throttle_next(1, retry_after=0.3)
        assert (await peer.request("schedule/28487/timerange", "read"))["status"] == "ok"
        body = await http_get(bridge, "/metrics")
        assert 'iotbridge_upstream_retries_total{operation="read"' in body


BAD_INPUT = [
    ("schedule/28487/timerange", '{"action":"rename"}', "unknown_action", "rename"),
    ("schedule/28487/timerange", '{"action":"update","end":"1"}', "invalid_payload", "range_id"),
    ("schedule/28487/timerange", '{"action":"delete"}', "invalid_payload", "range_id"),
    (
        "schedule/28487/timerange",
        '{"action":"create","interval":16511}',
        "invalid_payload",
        "reserved",
    ),
    (
        "schedule/28487/timerange",
        '{"action":"create","interval":{"days":["funday"]}}',
        "invalid_payload",
        "funday",
    ),
    ("schedule/28487/timerange", '{"action":"create","start":8}', "invalid_payload", "start"),
    ("schedule/abc/timerange", "read", "invalid_topic", "schedule id"),
]


async def test_bad_input(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    async with schedule_bridge():
        for topic, payload, code, message in BAD_INPUT:
            result = await peer.request(topic, payload)
            assert result["error"]["code"] == code, result
            assert message in result["error"]["message"], result
        assert (await peer.request("schedule/28487/timerange", "read"))["status"] == "ok"
    # Bad input never reached the upstream: one login, the start-up read and the one good read.
    calls = {mode: n for (mode, _), n in sensaphone.requests.items()}
    assert sum(calls.values()) == 3
    assert calls["login"] == 1


async def test_configured_schedules_are_published_from_the_start(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
) -> None:
    """Home Assistant's schedule sensors have a value from the first minute: every configured
    schedule is read at start-up and its ranges published, retained, before anyone asks."""
    async with schedule_bridge():
        await peer.wait_for(lambda m: m[0] == "schedule/28487/timeranges")
        async with Peer(peer.port) as late:  # a subscriber that comes later gets it retained
            retained = await late.wait_for(lambda m: m[0] == "schedule/28487/timeranges")
    assert retained[2]
    ranges = json.loads(retained[1])["timeranges"]
    assert [r["range_id"] for r in ranges] == [58381, 51587]
    assert not [m for m in peer.messages if m[0].endswith("/result")]  # nobody sent a command


async def test_a_command_that_exhausts_its_retries_is_dead_lettered(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    """HTTP 500 with Sensaphone's `success: false` on every attempt: after its retries the
    command is answered upstream_error and parked on bridge/deadletter, saying how many times
    Sensaphone was asked. (A refusal on the first answer, without retries, is not parked.)"""
    async with schedule_bridge(sensaphone_deadline="1.5"):
        await peer.wait_for(lambda m: m[0] == "schedule/28487/timeranges")  # the start-up read
        sensaphone.fail_next(1000, status=500, envelope=True)
        result = await peer.request("schedule/28487/timerange", "read")
        letter = json.loads((await peer.wait_for(lambda m: m[0] == "bridge/deadletter"))[1])
    assert result["error"]["code"] == "upstream_error"
    assert "Sensaphone refused the read: Internal error (code 1)" in result["error"]["message"]
    assert result["error"]["detail"]["deadletter"] == "bridge/deadletter"
    assert letter["topic"] == "schedule/28487/timerange"
    assert letter["error"]["code"] == "upstream_error"
    assert letter["attempts"] > 1


async def test_a_configured_schedule_keeps_its_configured_parent(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    peer: Peer,
    sensaphone: SensaphoneSimulator,
) -> None:
    """A publisher cannot redirect a configured schedule to another device (it once could:
    device_id 9999 in the payload went to Sensaphone as device 9999)."""
    async with schedule_bridge():
        await peer.wait_for(lambda m: m[0] == "schedule/28487/timeranges")  # the start-up read
        before = dict(sensaphone.requests)
        other = await peer.request(
            "schedule/28487/timerange", {"action": "read", "device_id": 9999}
        )
        same = await peer.request("schedule/28487/timerange", {"action": "read", "device_id": 1234})
    assert other["error"]["code"] == "invalid_payload"
    assert (
        "configured with its parent (default schedule of device 1234)" in other["error"]["message"]
    )
    assert "device 9999" in other["error"]["message"]
    assert same["status"] == "ok"  # naming the configured parent is fine
    reads = sum(n for (_, verb), n in sensaphone.requests.items() if verb == "read")
    assert reads - sum(n for (_, verb), n in before.items() if verb == "read") == 1


async def test_configured_schedules_are_read_again_after_a_reconnect(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    broker: Mosquitto,
    sensaphone: SensaphoneSimulator,
) -> None:
    """A range changed on Sensaphone's side while the bridge was cut off from the broker shows
    on the retained `schedule/<id>/timeranges` once it is back, with nobody sending `read`."""
    changed = {"range_id": 90500, "start": "06:00", "end": "07:30", "interval": 65}
    async with schedule_bridge() as bridge:
        async with Peer(broker.port) as before:
            first = await before.wait_for(lambda m: m[0] == "schedule/28487/timeranges")
        assert [r["range_id"] for r in json.loads(first[1])["timeranges"]] == [58381, 51587]
        reads = sum(n for (_, verb), n in sensaphone.requests.items() if verb == "read")

        await asyncio.to_thread(broker.stop)
        sensaphone.store.add_schedule("default_schedule", (1234, 28487), [changed])
        await asyncio.to_thread(broker.start)

        async with Peer(broker.port) as after:
            await after.wait_for(
                lambda m: m[0] == "schedule/28487/timeranges" and b"90500" in m[1], 15
            )
            assert bridge.ready
        async with Peer(broker.port) as late:  # a subscriber that comes later gets it retained
            message = await late.wait_for(lambda m: m[0] == "schedule/28487/timeranges")
    assert message[2]
    [published] = json.loads(message[1])["timeranges"]
    assert {k: published[k] for k in changed} == changed
    assert published["interval_decoded"]["days"] == ["sun", "sat"]
    assert sum(n for (_, verb), n in sensaphone.requests.items() if verb == "read") == reads + 1
