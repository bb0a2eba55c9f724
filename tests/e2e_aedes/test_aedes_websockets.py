"""MQTT over WebSockets: the bridge on aedes through `ws://` and `wss://` URLs.

The contract for the bridge (`mqtt.url`): `ws://host:port/path` and `wss://host:port/path` carry
MQTT over WebSockets at that path, `/mqtt` when the URL has none; `wss://` verifies the broker's
certificate against `mqtt.ca_file`. The user's peer stays on aedes' TCP listener: what the
bridge publishes over WebSockets reaches plain TCP clients and the other way round.

The first two tests check the broker side with independent clients (paho via aiomqtt, and the
`ws` package's own client, which checks the subprotocol the server picks).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import aiomqtt
import pytest

from bridge.sim.pager.server import PagerSimulator
from tests.aedes import ROOT, Aedes
from tests.e2e_aedes.conftest import BridgeFactory, Certificates, is_state, states
from tests.support import Peer

pytestmark = pytest.mark.aedes

# Opens a WebSocket offering the given subprotocols; prints the one the server chose.
WS_CLIENT = """
const WebSocket = require('ws')
const [url, ...offered] = process.argv.slice(1)
const socket = new WebSocket(url, offered)
socket.on('open', () => { console.log(`accepted ${socket.protocol}`); socket.close() })
socket.on('error', (err) => console.log(`refused ${err.message}`))
"""


def ws_handshake(node: str, url: str, *offered: str) -> str:
    done = subprocess.run(
        [node, "-e", WS_CLIENT, url, *offered],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout.strip()


async def test_aedes_speaks_mqtt_over_websockets_to_paho(
    aedes: Aedes, certificates: Certificates, peer: Peer
) -> None:
    tls = ssl.create_default_context(cafile=str(certificates.ca_file))
    for name, port, context in (("ws", aedes.ws_port, None), ("wss", aedes.wss_port, tls)):
        assert port is not None
        client = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=f"paho-{name}",
            protocol=aiomqtt.ProtocolVersion.V311,
            transport="websockets",
            websocket_path="/mqtt",
            tls_context=context,
        )
        async with client:
            await client.subscribe(f"from-tcp/{name}", qos=1)
            await client.publish(f"from-{name}", b"over websockets", qos=1)
            await peer.wait_for(lambda m: m[0] == f"from-{name}")  # noqa: B023
            await peer.publish(f"from-tcp/{name}", b"over tcp")
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
            assert message.payload == b"over tcp"
    assert "client-ready paho-ws ws" in aedes.log()
    assert "client-ready paho-wss wss" in aedes.log()


def test_the_websocket_listener_picks_the_mqtt_subprotocol(aedes: Aedes) -> None:
    assert aedes.node is not None
    url = f"ws://127.0.0.1:{aedes.ws_port}"
    assert ws_handshake(aedes.node, f"{url}/mqtt", "mqtt") == "accepted mqtt"
    assert ws_handshake(aedes.node, f"{url}/mqtt", "mqttv3.1") == "accepted mqttv3.1"
    assert ws_handshake(aedes.node, f"{url}/mqtt", "chat", "mqtt") == "accepted mqtt"
    assert ws_handshake(aedes.node, f"{url}/other", "mqtt") == (
        "refused Unexpected server response: 400"
    )


async def test_commands_over_websockets(
    aedes: Aedes, bridge_at: BridgeFactory, peer: Peer, pager_sim: PagerSimulator
) -> None:
    async with bridge_at(mqtt_url=f"ws://127.0.0.1:{aedes.ws_port}/mqtt"):
        await peer.wait_for(is_state("online"))
        started = await peer.request("pager/70/action", {"action": "start", "label": "WS"})
        assert started["status"] == "ok"
        assert started["data"]["session"]["label"] == "WS"
        await peer.wait_for(lambda m: m[0] == "pager/70/event" and b'"started"' in m[1])
        alert = await peer.request("pager/71/action", "alert")
        assert alert["status"] == "ok"
    await peer.wait_for(is_state("offline"))
    assert states(peer) == ["online", "offline"]
    assert [number for number, _, _ in pager_sim.received] == [70, 71]
    assert "client-ready iotbridge-aedes ws" in aedes.log()


async def test_a_websocket_url_without_a_path_means_slash_mqtt(
    aedes: Aedes, bridge_at: BridgeFactory, peer: Peer
) -> None:
    async with bridge_at(mqtt_url=f"ws://127.0.0.1:{aedes.ws_port}"):
        await peer.wait_for(is_state("online"))
        assert (await peer.request("pager/72/action", "alert"))["status"] == "ok"
    assert "client-ready iotbridge-aedes ws" in aedes.log()


async def test_the_websocket_path_comes_from_the_url(bridge_at: BridgeFactory) -> None:
    with Aedes(ws_path="/broker/ws") as elsewhere:
        async with (
            Peer(elsewhere.port, v5=False) as peer,
            bridge_at(mqtt_url=f"ws://127.0.0.1:{elsewhere.ws_port}/broker/ws"),
        ):
            await peer.wait_for(is_state("online"))
            assert (await peer.request("pager/73/action", "alert"))["status"] == "ok"
        assert "client-ready iotbridge-aedes ws" in elsewhere.log()


async def test_commands_over_wss_with_a_private_ca(
    aedes: Aedes, certificates: Certificates, bridge_at: BridgeFactory, peer: Peer
) -> None:
    url = f"wss://127.0.0.1:{aedes.wss_port}/mqtt"
    async with bridge_at(mqtt_url=url, mqtt_ca_file=str(certificates.ca_file)):
        await peer.wait_for(is_state("online"))
        result = await peer.request("pager/74/action", {"action": "alert", "message": "TLS"})
        assert result == {
            "status": "ok",
            "transaction": result["transaction"],
            "data": {"number": 74, "paged": True},
        }
    await peer.wait_for(is_state("offline"))
    assert "client-ready iotbridge-aedes wss" in aedes.log()


@pytest.mark.faults
async def test_the_bridge_reconnects_over_websockets_when_aedes_restarts(
    aedes: Aedes, bridge_at: BridgeFactory
) -> None:
    async with bridge_at(mqtt_url=f"ws://127.0.0.1:{aedes.ws_port}/mqtt"):
        async with Peer(aedes.port, v5=False) as before:
            await before.wait_for(is_state("online"))
        await asyncio.to_thread(aedes.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(aedes.start)
        async with Peer(aedes.port, v5=False) as after:
            await after.wait_for(is_state("online"), 15)
            assert (await after.request("pager/75/action", "alert"))["status"] == "ok"
    assert aedes.log().count("client-ready iotbridge-aedes ws") == 2
