"""Home Assistant discovery through a real broker: announced, re-announced, retired."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.conftest import BridgeFactory
from tests.support import Peer

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
