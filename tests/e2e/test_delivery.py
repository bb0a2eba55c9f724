"""Delivery guarantees as a client sees them: stale commands, duplicates, dead letters, state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.e2e.conftest import BridgeFactory
from tests.faults.tools import properties
from tests.support import Peer, http_get, running, settings

pytestmark = pytest.mark.broker


async def test_a_stale_command_is_expired_not_sent(
    bridge: Bridge, peer: Peer, pager_sim: PagerSimulator
) -> None:
    old = time.time() - 600
    result = await peer.request("pager/40/action", {"action": "alert", "sent_at": old})
    assert result["error"]["code"] == "expired"
    assert "older than 300 s" in result["error"]["message"]
    fresh = await peer.request("pager/40/action", {"action": "alert", "sent_at": time.time()})
    assert fresh["status"] == "ok"
    assert [r[0] for r in pager_sim.received] == [40]  # only the fresh one reached the device


async def test_a_redelivered_command_is_answered_not_repeated(
    bridge: Bridge, peer: Peer, pager_sim: PagerSimulator
) -> None:
    body = json.dumps({"action": "alert", "transaction": "once"})
    await peer.publish("pager/41/action", body)
    await peer.publish("pager/41/action", body)  # as after a redelivery
    await peer.wait_for(lambda _: len(peer.results.get("once", [])) == 2)
    first, second = peer.results["once"]
    assert first == second
    assert first["status"] == "ok"
    assert [r[0] for r in pager_sim.received] == [41]
    assert 'outcome="duplicate"' in await http_get(bridge, "/metrics")


async def test_no_answer_goes_to_the_dead_letter_topic(
    bridge_at: BridgeFactory, peer: Peer, pager_sim: PagerSimulator
) -> None:
    async with bridge_at(pager_timeout="0.3"):
        await pager_sim.set_silent(True)
        result = await peer.request("pager/42/action", {"action": "page"})
        assert result["error"]["code"] == "upstream_timeout"
        assert result["error"]["detail"]["deadletter"] == "bridge/deadletter"
        letter = json.loads((await peer.wait_for(lambda m: m[0] == "bridge/deadletter"))[1])
        assert letter["topic"] == "pager/42/action"
        assert json.loads(letter["payload"])["transaction"] == result["transaction"]
        assert letter["error"]["code"] == "upstream_timeout"
        await pager_sim.set_silent(False)


async def test_retained_state_is_republished_after_the_broker_lost_it(
    broker: Mosquitto, bridge: Bridge
) -> None:
    async with Peer(broker.port) as peer:
        assert (await peer.request("pager/43/action", {"action": "start"}))["status"] == "ok"
    # A broker that comes back without its store: retained messages are gone.
    broker.kill()
    broker.cleanup()
    fresh = Mosquitto(broker.port).start()
    try:
        async with Peer(fresh.port) as late:
            await late.wait_for(lambda m: m[0] == "bridge/state" and b"online" in m[1], 15)
            session = await late.wait_for(lambda m: m[0] == "pager/43/session" and m[1] != b"")
            assert json.loads(session[1])["number"] == 43
            await late.wait_for(lambda m: m[0] == "pager/statistics")
    finally:
        fresh.cleanup()


@contextlib.contextmanager
def refusing(
    tmp_path: Path, topic: str, pager_sim: PagerSimulator, client_id: str
) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    """A broker whose ACL refuses `topic` to everyone (PUBACK 0x87 under MQTT 5), and the
    settings of a bridge on it."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite #\ntopic deny {topic}\n", encoding="utf-8")
    with Mosquitto(acl_file=str(acl)) as guarded:
        yield (
            guarded,
            {
                "mqtt_url": f"mqtt://127.0.0.1:{guarded.port}",
                "mqtt_client_id": client_id,
                "pager_url": f"coap://127.0.0.1:{pager_sim.port}",
            },
        )


async def test_a_result_the_broker_refuses_is_dead_lettered_not_taken_as_delivered(
    tmp_path: Path, pager_sim: PagerSimulator
) -> None:
    """An ACL refuses the bridge's result topic for pager 13 (MQTT 5 PUBACK 0x87). The command
    ran, but nobody can see its result: it is parked on bridge/deadletter with the broker's
    reason, counted, and only then acknowledged, so it is not redelivered for ever."""
    with refusing(tmp_path, "pager/13/action/result", pager_sim, "iotbridge-refused") as (
        guarded,
        env,
    ):
        async with Peer(guarded.port) as peer, running(Bridge(settings(**env))) as bridge:
            await peer.publish(
                "pager/13/action", json.dumps({"action": "alert", "transaction": "x"})
            )
            letter = json.loads((await peer.wait_for(lambda m: m[0] == "bridge/deadletter"))[1])
            metrics = await http_get(bridge, "/metrics")
            assert (await peer.request("pager/14/action", {"action": "alert"}))["status"] == "ok"
        assert peer.on("pager/13/action/result") == []
        assert letter["topic"] == "pager/13/action"
        assert "Not authorized (0x87)" in letter["reason"]
        assert 'iotbridge_mqtt_publish_refused_total{reason="not_authorized"} 1.0' in metrics
        assert 'outcome="result_refused"' in metrics
        # Acknowledged: a new session of the same bridge gets nothing redelivered.
        async with running(Bridge(settings(**env))) as again:
            await asyncio.sleep(0.5)
            assert 'route="pager"' not in await http_get(again, "/metrics")
    assert [r[0] for r in pager_sim.received] == [13, 14]  # carried out once


async def test_refused_state_is_logged_and_counted_and_the_result_still_goes_out(
    tmp_path: Path, pager_sim: PagerSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL refuses the retained session of pager 15 (PUBACK 0x87), not its result. The
    command was carried out and its result says so; the refused state is no silent success:
    a WARNING naming the topic and the broker's reason, and the refusal counted."""
    with refusing(tmp_path, "pager/15/session", pager_sim, "iotbridge-refused-state") as (
        guarded,
        env,
    ):
        async with Peer(guarded.port) as peer, running(Bridge(settings(**env))) as bridge:
            result = await peer.request("pager/15/action", {"action": "start"})
            metrics = await http_get(bridge, "/metrics")
            assert peer.on("pager/15/session") == []
            assert peer.on("pager/15/event") != []  # what was allowed went out
        async with running(Bridge(settings(**env))) as again:
            await asyncio.sleep(0.5)
            assert 'route="pager"' not in await http_get(again, "/metrics")  # acknowledged
    assert result["status"] == "ok"
    assert 'iotbridge_mqtt_publish_refused_total{reason="not_authorized"} 1.0' in metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pager/15/session" in w and "0x87" in w for w in warnings), warnings


async def test_a_reused_transaction_is_refused_not_answered_with_another_commands_outcome(
    bridge: Bridge, peer: Peer, pager_sim: PagerSimulator
) -> None:
    start = json.dumps({"action": "start", "transaction": "t1"})
    clear = json.dumps({"action": "clear", "transaction": "t1"})
    await peer.publish("pager/44/action", start)
    await peer.wait_for(lambda _: len(peer.results.get("t1", [])) == 1)
    await peer.publish("pager/44/action", clear)
    await peer.wait_for(lambda _: len(peer.results.get("t1", [])) == 2)
    started, refused = peer.results["t1"]
    assert started["status"] == "ok"
    assert refused["error"]["code"] == "invalid_payload"
    assert "already used" in refused["error"]["message"]
    assert "for a different command" in refused["error"]["message"]
    # The same start again is a retry: the first outcome, and still one session at the device.
    await peer.publish("pager/44/action", start)
    await peer.wait_for(lambda _: len(peer.results.get("t1", [])) == 3)
    assert peer.results["t1"][2] == started
    assert [(r[0], r[1]) for r in pager_sim.received] == [(44, "POST")]


async def test_reused_correlation_data_is_refused_too(bridge_at: BridgeFactory, peer: Peer) -> None:
    async with bridge_at(mqtt_response_topics="client/reply"):
        await _reuse_correlation(peer)


async def _reuse_correlation(peer: Peer) -> None:
    first = await peer.request_v5("pager/base/action", "statistics", "client/reply")
    assert json.loads(first[1])["status"] == "ok"
    count = len(peer.on("client/reply"))
    await peer.publish(
        "pager/base/action",
        "get_settings",
        properties=properties(ResponseTopic="client/reply", CorrelationData=b"corr-1"),
    )
    await peer.wait_for(lambda _: len(peer.on("client/reply")) > count)
    again = peer.on("client/reply")[-1]
    assert json.loads(again[1])["error"]["code"] == "invalid_payload"
    assert again[3].CorrelationData == b"corr-1"


async def test_a_retained_command_is_never_carried_out(
    broker: Mosquitto, bridge_at: BridgeFactory, peer: Peer, pager_sim: PagerSimulator
) -> None:
    """Published with the retain flag, a page is carried out once, as it arrives live; the copy
    the broker stored is replayed at each subscribe, and refused each time."""
    assert peer._client is not None
    async with bridge_at():
        await peer._client.publish("pager/7/action", b"alert", qos=1, retain=True)
        live = await peer.wait_for(lambda m: m[0] == "pager/7/action/result")
        assert json.loads(live[1])["status"] == "ok"
    async with bridge_at() as bridge:
        replay = await peer.wait_for(
            lambda m: m[0] == "pager/7/action/result" and b'"error"' in m[1]
        )
        metrics = await http_get(bridge, "/metrics")
    error = json.loads(replay[1])["error"]
    assert error["code"] == "expired"
    assert "retained command is never carried out" in error["message"]
    assert 'action="alert",outcome="retained",route="pager"' in metrics
    assert [r[0] for r in pager_sim.received] == [7]
    await peer._client.publish("pager/7/action", b"", qos=1, retain=True)  # clean up
