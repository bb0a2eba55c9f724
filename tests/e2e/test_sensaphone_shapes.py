"""Schedules end to end against a Sensaphone whose replies are shaped otherwise than our
simulator's (ids, codes and numbers as text, a start time as a number, fields nobody
documented, an end left out: `tests.adapter.test_sensaphone_shapes.other`), and one whose
reply is past the size cap. Real Mosquitto, real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.adapter.test_sensaphone_shapes import EXTRA, other, padded
from tests.e2e.conftest import SCHEDULE_28487, sensaphone_env
from tests.support import Peer, http_get

pytestmark = pytest.mark.broker

TOPIC = "schedule/28487/timerange"
EVERY_DAY = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def decoded(days: list[str]) -> dict[str, Any]:
    return {"days": days, "holiday": False, "datetime": False, "repeat": None, "invert": False}


@pytest.fixture
def sensaphone() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator() as sim:
        yield sim


@pytest.fixture
def schedule_bridge(
    bridge_at: Callable[..., AbstractAsyncContextManager[Bridge]], sensaphone: SensaphoneSimulator
) -> Callable[..., AbstractAsyncContextManager[Bridge]]:
    def make(**env: str) -> AbstractAsyncContextManager[Bridge]:
        settings = {"sensaphone_schedules": SCHEDULE_28487, "sensaphone_deadline": "5"}
        return bridge_at(**sensaphone_env(sensaphone, **settings | env))

    return make


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_every_command_succeeds_and_unknown_fields_reach_mqtt(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    sensaphone: SensaphoneSimulator,
    peer: Peer,
    mode: str,
) -> None:
    sensaphone.reshape = other
    async with schedule_bridge(sensaphone_mode=mode):
        read = await peer.request(TOPIC, {"action": "read"})
        created = await peer.request(TOPIC, {"action": "create", "start": "06:00", "end": "07:30"})
        retained = await peer.wait_for(
            lambda m: m[0] == "schedule/28487/timeranges" and b"90001" in m[1]
        )
        updated = await peer.request(TOPIC, {"action": "update", "range_id": 90001, "interval": 1})
        deleted = await peer.request(TOPIC, {"action": "delete", "range_id": 90001})

    assert read["status"] == "ok", read
    assert read["data"]["timeranges"] == [
        {"range_id": 58381, "start": 800, "end": "17:00", "interval": 127, **EXTRA}
        | {"interval_decoded": decoded(EVERY_DAY)},
        {"range_id": 51587, "start": "17:00", "interval": 7, **EXTRA}
        | {"interval_decoded": decoded(["sun", "mon", "tue"])},
    ]
    new = {"range_id": 90001, "start": "06:00", "end": "07:30", "interval": 127, **EXTRA}
    assert created["status"] == "ok", created
    assert created["data"]["changed"] == [new]
    assert json.loads(retained[1]) == {
        "schedule_id": 28487,
        "timeranges": [*read["data"]["timeranges"], new | {"interval_decoded": decoded(EVERY_DAY)}],
    }
    assert updated["status"] == "ok", updated
    assert updated["data"]["changed"] == [new | {"interval": 1}]
    assert deleted["status"] == "ok", deleted
    assert deleted["data"]["changed"] == [{"range_id": 90001, **EXTRA}]
    assert [r["range_id"] for r in deleted["data"]["timeranges"]] == [58381, 51587]
    assert sensaphone.ranges_created == 1


async def test_a_reply_past_the_cap_is_upstream_error_and_counted(
    schedule_bridge: Callable[..., AbstractAsyncContextManager[Bridge]],
    sensaphone: SensaphoneSimulator,
    peer: Peer,
) -> None:
    async with schedule_bridge(sensaphone_max_reply_bytes="65536") as bridge:
        assert (await peer.request(TOPIC, {"action": "read"}))["status"] == "ok"
        sensaphone.reshape = padded  # 16 MiB
        result = await peer.request(TOPIC, {"action": "read"})
        metrics = await http_get(bridge, "/metrics")
        assert bridge.ready
    assert result["status"] == "error", result
    assert result["error"]["code"] == "upstream_error"
    assert "reply larger than 65536 bytes" in result["error"]["message"]
    assert 'iotbridge_limits_reached_total{limit="sensaphone_reply"} 1.0' in metrics
