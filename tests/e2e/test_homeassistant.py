"""Home Assistant discovery through a real broker: announced, re-announced, retired."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from bridge.homeassistant import announcer as homeassistant
from tests.e2e.conftest import BridgeFactory
from tests.support import Peer, Received

pytestmark = pytest.mark.broker

NODE = "homeassistant/+/iotbridge_site-1/+/config"


def configs(peer: Peer) -> dict[str, bytes]:
    """The latest payload per discovery topic, as Home Assistant would hold them."""
    return {
        topic: payload
        for topic, payload, _, _ in peer.messages
        if topic.startswith("homeassistant/") and topic.endswith("/config")
    }


async def test_discovery_lifecycle(bridge_at: BridgeFactory, peer: Peer) -> None:
    env = {"discovery_enabled": "true", "discovery_node": "site-1", "pager_numbers": "1,2"}
    page_2 = "homeassistant/button/iotbridge_site-1/pager_2_page/config"
    async with bridge_at(**env):
        await peer.wait_for(lambda m: m[0] == page_2)
        button = json.loads(configs(peer)[page_2])
        assert button["command_topic"] == "pager/2/action"
        assert button["payload_press"] == "page"
        assert button["availability"][0]["topic"] == "bridge/state"
        count = len(peer.messages)
        await peer.publish("homeassistant/status", "online")  # HA restarted: announce again
        await peer.wait_for(lambda m: m[0] == page_2 and peer.messages.index(m) >= count)

    async with bridge_at(**(env | {"pager_numbers": "1"})):
        # Pager 2 left the configuration: its entities are removed with empty retained configs.
        await peer.wait_for(lambda m: m[0] == page_2 and m[1] == b"")
        await asyncio.sleep(0.3)
        live = {t for t, p in configs(peer).items() if p}
        assert "homeassistant/button/iotbridge_site-1/pager_1_page/config" in live
        assert not any("pager_2" in t for t in live)


async def test_the_start_button_takes_the_sites_default_goal(
    bridge_at: BridgeFactory, peer: Peer
) -> None:
    """Start sends what its config says to the command topic, and that names no goal nor party
    size: the transmitter's own defaults apply, so changing `defaultTargetGoal` on the device
    changes what Start does, with nothing to change in the bridge or in Home Assistant."""
    env = {"discovery_enabled": "true", "discovery_node": "site-1", "pager_numbers": "4"}
    start_4 = "homeassistant/button/iotbridge_site-1/pager_4_start/config"
    async with bridge_at(**env):
        await peer.wait_for(lambda m: m[0] == start_4)
        button = json.loads(configs(peer)[start_4])
        changed = await peer.request(
            "pager/base/action", {"action": "set_settings", "settings": {"defaultTargetGoal": 900}}
        )
        assert changed["status"] == "ok"
        await peer.publish(button["command_topic"], button["payload_press"])
        await peer.wait_for(lambda m: m[0] == "pager/4/action/result")
        session = peer.payloads("pager/4/session")[-1]
    assert session["state"] == "started"
    assert session["goalInSeconds"] == 900
    assert session["partySize"] == 1


def emptied(topic: str) -> Callable[[Received], bool]:
    return lambda m: m[0] == topic and m[1] == b""


async def test_idle_pagers_read_idle(
    bridge_at: BridgeFactory, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zero-length session message follows each announcement for every announced pager with
    no session (HA's session sensor reads it as idle); never for one that has a session."""
    monkeypatch.setattr(homeassistant, "IDLE_DELAY", 0.2)
    env = {"discovery_enabled": "true", "discovery_node": "site-1", "pager_numbers": "1,2"}
    async with bridge_at(**env):
        for topic in ("pager/1/session", "pager/2/session"):
            await peer.wait_for(emptied(topic))
        assert (await peer.request("pager/1/action", {"action": "start"}))["status"] == "ok"
        count = len(peer.messages)
        await peer.publish("homeassistant/status", "online")
        await peer.wait_for(lambda m: m[0] == "pager/2/session" and peer.messages.index(m) > count)
        await asyncio.sleep(0.3)
        later = [m for m in peer.messages[count:] if m[0] == "pager/1/session"]
        assert later == []
        assert json.loads(peer.on("pager/1/session")[-1][1])["state"] == "started"


async def test_a_failed_pager_command_is_an_error_event_before_its_result(
    bridge_at: BridgeFactory, peer: Peer
) -> None:
    async with bridge_at():
        result = await peer.request("pager/77/action", {"action": "page"})
        assert result["error"]["code"] == "upstream_error"
        [event] = peer.payloads("pager/77/event")
        assert event == {
            "event": "error",
            "number": 77,
            "action": "page",
            "error": {"code": "upstream_error", "message": result["error"]["message"]},
        }
        topics = [m[0] for m in peer.messages]
        assert topics.index("pager/77/event") < topics.index("pager/77/action/result")
        # Refused before it reached the transmitter: announced all the same, with the action
        # the command attempted where it could be read.
        refused = await peer.request("pager/78/action", {"action": "page", "bad": 1})
        assert refused["error"]["code"] == "invalid_payload"
        [event] = peer.payloads("pager/78/event")
        assert event == {
            "event": "error",
            "number": 78,
            "action": "page",
            "error": refused["error"],
        }
        garbled = await peer.request("pager/79/action", "{not json")
        [event] = peer.payloads("pager/79/event")
        assert event == {"event": "error", "number": 79, "error": garbled["error"]}
        # A number outside the site's range names no pager: the result only.
        assert (await peer.request("pager/70000/action", "page"))["error"]["code"] == (
            "invalid_topic"
        )
        assert peer.on("pager/70000/event") == []
