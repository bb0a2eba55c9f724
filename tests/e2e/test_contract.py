"""The MQTT contract as a client sees it: bad input, results, MQTT v5/3.1.1, state, metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.config import Settings
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.e2e.conftest import BridgeFactory
from tests.faults.tools import properties
from tests.support import Peer, http_get, running, started_sim

pytestmark = pytest.mark.broker

BAD_INPUT = [
    ("pager/5/action", "{not json", "invalid_payload", "not valid JSON"),
    ("pager/5/action", '{"action":"start","partySize":"four"}', "invalid_payload", "partySize"),
    ("pager/5/action", '{"action":"dance"}', "unknown_action", "unknown action 'dance'"),
    ("pager/abc/action", "page", "invalid_topic", "positive integer"),
    ("pager/-3/action", "page", "invalid_topic", "positive integer"),
    ("pager/100000/action", "page", "invalid_topic", "between 1 and 65535"),
    ("pager/5/action", "x" * 20000, "invalid_payload", "the limit is 16384"),
    ("pager/5/action", "[" * 5000, "invalid_payload", "JSON object or a bare action word"),
    ("pager/5/action", '{"action":' + "[" * 5000, "invalid_payload", "nested too deeply"),
    # The topic is right; this bridge has no Sensaphone account: a configuration problem.
    ("schedule/28487/timerange", '{"action":"read"}', "not_configured", "sensaphone.user"),
    (
        "pager/5/action",
        json.dumps({"action": "start", "label": "L" * 65}),
        "invalid_payload",
        "label is 65 characters",
    ),
]


async def test_bad_input_gets_clear_errors_and_the_bridge_keeps_serving(
    bridge: Bridge, peer: Peer
) -> None:
    for topic, payload, code, message in BAD_INPUT:
        result = await peer.request(topic, payload)
        assert result["status"] == "error", (topic, payload)
        assert result["error"]["code"] == code, (payload, result)
        assert message in result["error"]["message"], (payload, result)
    ok = await peer.request("pager/5/action", {"action": "start"})
    assert ok["status"] == "ok"
    body = await http_get(bridge, "/metrics")
    assert (
        'iotbridge_commands_total{action="none",outcome="invalid_topic",route="invalid"} 3.0'
        in body
    )
    # Refused commands are labelled by what they attempted, where that can be read.
    assert (
        'iotbridge_commands_total{action="none",outcome="unknown_action",route="pager"} 1.0' in body
    )
    assert 'action="start",outcome="invalid_payload",route="pager"' in body
    # A site not configured for schedules: its own code, and nothing for the dead-letter topic
    # (no retry would help).
    assert 'action="read",outcome="not_configured",route="schedule"' in body
    assert peer.on("bridge/deadletter") == []


async def test_pager_66_foo_never_reaches_the_bridge(
    bridge: Bridge, peer: Peer, pager_sim: PagerSimulator
) -> None:
    """README: the bridge subscribes to `pager/+/action` and `schedule/+/timerange` only, so a
    topic such as `pager/66/foo` never reaches it: no result on `pager/66/foo/result` nor on
    any other topic, no command counted, nothing sent to the transmitter, and the bridge keeps
    serving. (Sent first: had it been delivered, the command after it would queue behind it on
    pager 66's lane, and its answer would be in before the next one's.)"""
    await peer.publish("pager/66/foo", json.dumps({"action": "start", "transaction": "foo-1"}))
    ok = await peer.request("pager/66/action", {"action": "start"})
    assert ok["status"] == "ok"
    assert peer.on("pager/66/foo/result") == []
    assert "foo-1" not in peer.results
    assert [m[0] for m in peer.messages if m[0].endswith("/result")] == ["pager/66/action/result"]
    assert [(n, method) for n, method, _ in pager_sim.received] == [(66, "POST")]
    body = await http_get(bridge, "/metrics")
    assert 'iotbridge_commands_total{action="start",outcome="ok",route="pager"} 1.0' in body
    assert 'outcome="invalid_topic"' not in body
    assert await http_get(bridge, "/readyz") == "ready\n"


async def test_transaction_is_echoed_even_for_invalid_payloads(bridge: Bridge, peer: Peer) -> None:
    await peer.publish("pager/5/action", '{"action":"dance","transaction":"abc-1"}')
    message = await peer.wait_for(lambda m: m[0] == "pager/5/action/result")
    assert json.loads(message[1])["transaction"] == "abc-1"


async def test_mqtt5_response_topic_and_correlation(bridge_at: BridgeFactory, peer: Peer) -> None:
    async with bridge_at(mqtt_response_topics="clients/+/replies"):
        reply = await peer.request_v5("pager/8/action", "start", "clients/me/replies")
        assert json.loads(reply[1])["status"] == "ok"
        assert reply[3].CorrelationData == b"corr-1"
        # The usual result topic gets it too.
        await peer.wait_for(lambda m: m[0] == "pager/8/action/result")


@pytest.mark.parametrize(
    ("allowed", "response", "reason"),
    [
        ("", "clients/me/replies", "not_allowed"),  # opt-in: nothing by default
        ("clients/#", "elsewhere/replies", "not_allowed"),
        ("#", "pager/9/action/result", "reserved"),  # this site's own namespace
        ("#", "pager/7/action", "reserved"),  # a command topic: acting for the publisher
        ("#", "bridge/state", "reserved"),
        ("#", "homeassistant/button/x/config", "reserved"),  # the discovery prefix
        ("#", "other-site/pager/1/action", "reserved"),  # another site of this process
    ],
)
async def test_a_response_topic_is_answered_only_where_allowed(
    bridge_settings: Callable[..., Settings],
    pager_sim: PagerSimulator,
    peer: Peer,
    tmp_path: Path,
    allowed: str,
    response: str,
    reason: str,
) -> None:
    """No publisher can make the bridge write where it may not write itself."""
    config = tmp_path / "sites.yaml"
    pager = f"{{url: '{pager_sim.uri}'}}"
    config.write_text(
        f"sites:\n  - {{name: main, topic_prefix: '', pager: {pager}}}\n"
        f"  - {{name: other-site, pager: {pager}}}\n",
        encoding="utf-8",
    )
    settings = bridge_settings(config=str(config), mqtt_response_topics=allowed)
    props = properties(ResponseTopic=response, CorrelationData=b"corr-9")
    async with running(Bridge(settings)) as bridge:
        await peer.publish("pager/9/action", b"get", properties=props)
        await peer.wait_for(lambda m: m[0] == "pager/9/action/result")
        await asyncio.sleep(0.3)
        metrics = await http_get(bridge, "/metrics")
    assert len(peer.on("pager/9/action/result")) == 1  # the result, and only once
    replies = [m for m in peer.on(response) if m[1].startswith(b'{"status"')]
    assert replies == [] or response == "pager/9/action/result"
    assert f'iotbridge_response_topics_ignored_total{{reason="{reason}"}} 1.0' in metrics


async def test_mqtt311_clients_get_their_transaction(
    broker: Mosquitto, bridge_at: BridgeFactory
) -> None:
    async with bridge_at(mqtt_protocol="3.1.1"), Peer(broker.port, v5=False) as old:
        result = await old.request("pager/21/action", {"action": "start"})
        assert result["status"] == "ok"
        assert result["transaction"].startswith("t")


async def test_bridge_state_online_then_offline(
    broker: Mosquitto, bridge_at: BridgeFactory, peer: Peer
) -> None:
    async with bridge_at():
        await peer.wait_for(lambda m: m[0] == "bridge/state" and b"online" in m[1])
    await peer.wait_for(lambda m: m[0] == "bridge/state" and b"offline" in m[1])
    async with Peer(broker.port) as late:  # retained: a newcomer sees the last state
        message = await late.wait_for(lambda m: m[0] == "bridge/state")
        assert json.loads(message[1]) == {"state": "offline"}
        assert message[2]


async def test_probes_and_metrics(bridge: Bridge, peer: Peer) -> None:
    await peer.request("pager/30/action", {"action": "start"})
    await peer.request("pager/31/action", {"action": "page"})
    assert await http_get(bridge, "/livez") == "ok\n"
    assert await http_get(bridge, "/readyz") == "ready\n"
    body = await http_get(bridge, "/metrics")
    assert 'iotbridge_commands_total{action="start",outcome="ok",route="pager"} 1.0' in body
    assert 'iotbridge_commands_total{action="page",outcome="upstream_error",route="pager"}' in body
    assert 'iotbridge_mqtt_connected{site="default"} 1.0' in body
    assert 'iotbridge_upstream_request_duration_seconds_bucket{le="60.0",operation="start"' in body
    assert 'iotbridge_command_duration_seconds_bucket{le="0.001",route="pager"}' in body
    assert 'iotbridge_pager_sessions{site="default"} 1.0' in body
    for forbidden in ('"30"', '"31"', "pager/30", "pager/31"):
        assert forbidden not in body


async def test_commands_sent_while_the_bridge_is_down_are_carried_out(
    bridge_at: BridgeFactory, peer: Peer
) -> None:
    async with bridge_at():
        pass  # registers the persistent session and its subscriptions
    for number in (51, 52, 53):
        await peer.publish(f"pager/{number}/action", json.dumps({"action": "start"}))
    async with bridge_at():
        for number in (51, 52, 53):
            topic = f"pager/{number}/action/result"
            message = await peer.wait_for(lambda m: m[0] == topic)  # noqa: B023 - awaited here
            assert json.loads(message[1])["status"] == "ok", message[1]


async def test_upstream_timeout(
    bridge_at: BridgeFactory, peer: Peer, pager_sim: PagerSimulator
) -> None:
    async with bridge_at(pager_timeout="0.5"):
        await pager_sim.set_silent(True)
        result = await peer.request("pager/60/action", {"action": "start"})
        assert result["error"]["code"] == "upstream_timeout"
        await pager_sim.set_silent(False)
        assert (await peer.request("pager/60/action", {"action": "start"}))["status"] == "ok"


async def test_broker_restart(bridge: Bridge, broker: Mosquitto) -> None:
    broker.kill()
    await asyncio.sleep(0.3)
    assert not bridge.ready
    broker.start()
    async with Peer(broker.port) as peer:
        await peer.wait_for(lambda m: m[0] == "bridge/state" and b"online" in m[1], 15)
        result = await peer.request("pager/61/action", {"action": "start"})
        assert result["status"] == "ok"
    assert "iotbridge_mqtt_reconnects_total" in await http_get(bridge, "/metrics")


async def test_mqtt_socket_has_nagle_off(bridge: Bridge) -> None:
    driver = bridge.sites[0].link._driver
    assert driver is not None
    sock = driver.socket
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_transmitter_restart(bridge: Bridge, peer: Peer, pager_sim: PagerSimulator) -> None:
    assert (await peer.request("pager/70/action", {"action": "start"}))["status"] == "ok"
    await pager_sim.stop()  # the device is powered off: ICMP port unreachable
    down = await peer.request("pager/71/action", {"action": "start"})
    assert down["error"]["code"] in {"upstream_unavailable", "upstream_timeout"}
    async with started_sim(port=pager_sim.port):
        back = await peer.request("pager/72/action", {"action": "start"})
        assert back["status"] == "ok", back


async def test_polling_when_observe_is_unavailable(
    broker: Mosquitto, bridge_settings: Callable[..., Settings], peer: Peer
) -> None:
    async with started_sim(observe=False) as sim:
        env = {"pager_url": f"coap://127.0.0.1:{sim.port}", "pager_poll_interval": "0.2"}
        async with running(Bridge(bridge_settings(**env))) as bridge:
            sim.console_create(33, label="Walk-in")
            await peer.wait_for(lambda m: m[0] == "pager/33/event" and b'"started"' in m[1])
            sim.console_remove(33)
            await peer.wait_for(lambda m: m[0] == "pager/33/event" and b'"removed"' in m[1])
            body = await http_get(bridge, "/metrics")
            assert 'iotbridge_pager_watch_mode{mode="poll",site="default"} 1.0' in body
