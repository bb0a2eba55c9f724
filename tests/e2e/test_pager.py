"""Every T7470 operation end to end: MQTT in, CoAP to the simulator, results and state out."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.app import Bridge
from bridge.sim.pager.server import PagerSimulator
from tests.e2e.conftest import BridgeFactory
from tests.support import Peer, started_sim

pytestmark = pytest.mark.broker


def event_names(peer: Peer, number: int) -> list[str]:
    return [p["event"] for p in peer.payloads(f"pager/{number}/event")]


async def test_session_lifecycle(bridge: Bridge, peer: Peer) -> None:
    started = await peer.request(
        "pager/66/action", {"action": "start", "label": "Sarah", "partySize": 4, "goal": 60}
    )
    assert started["status"] == "ok"
    session = started["data"]["session"]
    assert (session["number"], session["state"], session["label"]) == (66, "started", "Sarah")
    assert session["goalInSeconds"] == 60
    await peer.wait_for(lambda m: m[0] == "pager/66/session" and m[1] != b"")

    paged = await peer.request("pager/66/action", {"action": "page", "pageMode": "Vibe1"})
    assert paged["data"]["session"]["state"] == "paged"
    updated = await peer.request("pager/66/action", {"action": "update", "label": "Sarah B"})
    assert updated["data"]["session"]["label"] == "Sarah B"
    got = await peer.request("pager/66/action", {"action": "get"})
    assert got["data"]["session"]["label"] == "Sarah B"
    cleared = await peer.request("pager/66/action", {"action": "clear"})
    assert cleared["data"]["session"]["state"] == "cleared"

    await peer.wait_for(lambda m: m[0] == "pager/66/session" and m[1] == b"")
    await peer.wait_for(lambda m: m[0] == "pager/66/event" and b'"cleared"' in m[1])
    assert event_names(peer, 66) == ["started", "paged", "updated", "cleared"]
    final = peer.payloads("pager/66/event")[-1]
    assert final["session"]["clearType"] == "STOP"
    assert final["number"] == 66

    # What a client connecting now finds retained: statistics, and no session for 66.
    async with Peer(peer.port) as late:
        stats = await late.wait_for(lambda m: m[0] == "pager/statistics")
        assert stats[2]
        assert json.loads(stats[1])["guestsServed"] == 1
        await asyncio.sleep(0.2)
        assert late.on("pager/66/session") == []


async def test_remove_delete_and_alert(bridge: Bridge, peer: Peer) -> None:
    for number, how in ((10, "remove"), (11, "delete")):
        assert (await peer.request(f"pager/{number}/action", {"action": "start"}))["status"] == "ok"
        result = await peer.request(f"pager/{number}/action", {"action": how})
        assert result["status"] == "ok", result
        event_topic = f"pager/{number}/event"
        await peer.wait_for(lambda m: m[0] == event_topic and b"removed" in m[1])  # noqa: B023
        assert event_names(peer, number) == ["started", "removed"]
    alert = await peer.request("pager/12/action", {"action": "alert", "message": "Table ready"})
    assert alert == {
        "status": "ok",
        "transaction": alert["transaction"],
        "data": {"number": 12, "paged": True},
    }


async def test_start_and_page_at_once(bridge: Bridge, peer: Peer) -> None:
    result = await peer.request("pager/13/action", {"action": "start", "page": True})
    assert result["data"]["session"]["state"] == "paged"
    await peer.wait_for(lambda m: m[0] == "pager/13/event" and b'"paged"' in m[1])
    assert event_names(peer, 13) == ["started", "paged"]


async def test_base_station_operations(bridge: Bridge, peer: Peer) -> None:
    for number in (1, 2, 3):
        await peer.request(f"pager/{number}/action", {"action": "start", "goal": 600})
    await peer.request("pager/1/action", {"action": "page"})
    await peer.request("pager/1/action", {"action": "clear"})

    listed = await peer.request("pager/base/action", {"action": "list"})
    assert sorted(s["number"] for s in listed["data"]["sessions"]) == [2, 3]
    stats = await peer.request("pager/base/action", {"action": "statistics"})
    assert stats["data"]["guestsServed"] == 1
    assert stats["data"]["numSessions"] == 3
    assert stats["data"]["percentOnTime"] == 100
    history = await peer.request("pager/base/action", {"action": "history"})
    assert [(h["number"], h["clearType"]) for h in history["data"]["history"]] == [(1, "STOP")]

    cleared = await peer.request("pager/base/action", {"action": "clear_all"})
    assert sorted(s["number"] for s in cleared["data"]["cleared"]) == [2, 3]
    await peer.wait_for(lambda m: m[0] == "pager/3/session" and m[1] == b"")
    assert (await peer.request("pager/base/action", "clear_history"))["status"] == "ok"
    history = await peer.request("pager/base/action", {"action": "history"})
    assert history["data"]["history"] == []

    reset = await peer.request("pager/base/action", {"action": "clear_statistics"})
    assert reset["status"] == "ok"
    settings = await peer.request("pager/base/action", {"action": "get_settings"})
    assert settings["data"]["statisticsClearMark"]
    changed = await peer.request(
        "pager/base/action", {"action": "set_settings", "settings": {"defaultTargetGoal": 240}}
    )
    assert changed["data"]["defaultTargetGoal"] == 240
    await peer.wait_for(
        lambda m: m[0] == "pager/statistics" and m[2] and json.loads(m[1])["guestsServed"] == 0
    )


async def test_changes_made_at_the_console_are_republished(
    bridge: Bridge, peer: Peer, pager_sim: PagerSimulator
) -> None:
    pager_sim.console_create(42, label="Walk-in")
    await peer.wait_for(lambda m: m[0] == "pager/42/event" and b'"started"' in m[1])
    pager_sim.console_page(42)
    await peer.wait_for(lambda m: m[0] == "pager/42/event" and b'"paged"' in m[1])
    pager_sim.console_clear(42)
    await peer.wait_for(lambda m: m[0] == "pager/42/session" and m[1] == b"")
    await peer.wait_for(lambda m: m[0] == "pager/42/event" and b'"cleared"' in m[1])
    assert event_names(peer, 42) == ["started", "paged", "cleared"]


async def test_device_errors_carry_the_code_and_body(bridge: Bridge, peer: Peer) -> None:
    result = await peer.request("pager/77/action", {"action": "page"})
    assert result["status"] == "error"
    assert result["error"]["code"] == "upstream_error"
    assert result["error"]["detail"]["coap_code"] == "4.04"
    assert "77" in json.dumps(result["error"]["detail"]["body"])
    await peer.request("pager/78/action", {"action": "start"})
    again = await peer.request("pager/78/action", {"action": "start"})
    assert again["error"]["detail"]["coap_code"] == "4.00"


async def test_the_transmitter_decides_which_numbers_exist(
    bridge_at: BridgeFactory, peer: Peer
) -> None:
    """No invented limit: pager 1200 and 4242 reach the transmitter. One that knows them
    answers; one that does not says so itself, and the result carries its answer."""
    async with started_sim(max_number=65535) as big, bridge_at(pager_url=big.uri):
        for number in (1200, 4242):
            result = await peer.request(f"pager/{number}/action", {"action": "start"})
            assert result["status"] == "ok", result
            assert result["data"]["session"]["number"] == number
    async with started_sim(max_number=999) as small, bridge_at(pager_url=small.uri):
        refused = await peer.request("pager/1200/action", {"action": "start"})
        assert refused["error"]["code"] == "upstream_error", refused
        assert refused["error"]["detail"]["coap_code"].startswith("4.")
    async with bridge_at(pager_max_number="1000"):
        narrowed = await peer.request("pager/1200/action", {"action": "start"})
        assert narrowed["error"]["code"] == "invalid_topic"
