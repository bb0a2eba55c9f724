"""The bridge on aedes over TCP, MQTT 3.1.1, as a user's 3.1.1 client sees it on the wire.

aedes keeps sessions in memory: a stopped or killed bridge finds its subscriptions and the
commands queued for it when it returns, as long as aedes itself stays up. A restarted aedes has
forgotten everything, so after a broker restart only commands sent once the bridge announced
itself online again can reach it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.sim.pager.server import PagerSimulator
from tests.aedes import Aedes
from tests.e2e_aedes.conftest import BridgeFactory, is_state, states
from tests.faults.tools import BridgeProcess
from tests.support import Peer

pytestmark = pytest.mark.aedes


async def publish_commands(peer: Peer, transactions: dict[str, int]) -> None:
    """One `alert` per transaction, to the pager number it maps to."""
    for transaction, number in transactions.items():
        body = {"action": "alert", "transaction": transaction}
        await peer.publish(f"pager/{number}/action", json.dumps(body))


async def test_commands_are_answered_with_their_transaction(
    aedes: Aedes, bridge: Bridge, peer: Peer
) -> None:
    body = {"action": "start", "label": "Sarah", "partySize": 4, "transaction": "aedes-start"}
    await peer.publish("pager/66/action", json.dumps(body))
    await peer.wait_answered({"aedes-start"})
    [started] = peer.results["aedes-start"]
    assert started["status"] == "ok"
    assert started["transaction"] == "aedes-start"
    assert (started["data"]["session"]["number"], started["data"]["session"]["label"]) == (
        66,
        "Sarah",
    )
    await peer.wait_for(lambda m: m[0] == "pager/66/session" and m[1] != b"")

    paged = await peer.request("pager/66/action", "page")  # a bare word is a command too
    assert paged["data"]["session"]["state"] == "paged"
    await peer.wait_for(lambda m: m[0] == "pager/66/event" and b'"paged"' in m[1])
    assert [e["event"] for e in peer.payloads("pager/66/event")] == ["started", "paged"]

    refused = await peer.request("pager/0/action", {"action": "page"})
    assert refused["status"] == "error"
    assert refused["error"]["code"] == "invalid_topic"

    # Retained state from aedes to a client connecting now: the session and online.
    async with Peer(aedes.port, v5=False) as late:
        session = await late.wait_for(lambda m: m[0] == "pager/66/session")
        assert session[2]
        assert json.loads(session[1])["state"] == "paged"
        await late.wait_for(is_state("online"))
    assert "client-ready iotbridge-aedes tcp" in aedes.log()


async def test_state_is_online_then_offline_on_a_clean_shutdown(
    aedes: Aedes, bridge_at: BridgeFactory, peer: Peer
) -> None:
    async with bridge_at():
        await peer.wait_for(is_state("online"))
    await peer.wait_for(is_state("offline"))
    assert states(peer) == ["online", "offline"]
    async with Peer(aedes.port, v5=False) as late:
        retained = await late.wait_for(lambda m: m[0] == "bridge/state")
        assert retained[2]
        assert json.loads(retained[1]) == {"state": "offline"}


async def test_commands_sent_while_the_bridge_was_down_are_carried_out(
    bridge_at: BridgeFactory, peer: Peer, pager_sim: PagerSimulator
) -> None:
    async with bridge_at():
        await peer.wait_for(is_state("online"))
    await peer.wait_for(is_state("offline"))
    # aedes holds the bridge's persistent session (clean session 0) and queues these for it.
    queued = {f"queued-{n}": 30 + n for n in range(5)}
    await publish_commands(peer, queued)
    await asyncio.sleep(0.3)
    assert not peer.results  # nobody was there to answer
    async with bridge_at():
        await peer.wait_answered(set(queued), 15)
    assert all(len(peer.results[t]) == 1 for t in queued)
    assert {peer.results[t][0]["status"] for t in queued} == {"ok"}
    assert sorted(number for number, _, _ in pager_sim.received) == sorted(queued.values())


@pytest.mark.faults
async def test_the_will_says_offline_when_the_bridge_process_is_killed(
    aedes: Aedes, peer: Peer, pager_sim: PagerSimulator, tmp_path: Path
) -> None:
    process = BridgeProcess(
        {
            "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{aedes.port}",
            "IOTBRIDGE_MQTT_PROTOCOL": "3.1.1",
            "IOTBRIDGE_MQTT_CLIENT_ID": "iotbridge-aedes-kill",
            "IOTBRIDGE_PAGER_URL": pager_sim.uri,
        },
        tmp_path / "bridge.log",
    )
    try:
        process.start()
        await peer.wait_for(is_state("online"), 20)
        assert (await peer.request("pager/50/action", {"action": "alert"}))["status"] == "ok"
        await asyncio.to_thread(process.signal, signal.SIGKILL)
        # No DISCONNECT was sent: aedes publishes the will.
        await peer.wait_for(is_state("offline"))
        assert states(peer) == ["online", "offline"]
        async with Peer(aedes.port, v5=False) as late:  # the will is retained
            retained = await late.wait_for(lambda m: m[0] == "bridge/state")
            assert (retained[2], json.loads(retained[1])) == (True, {"state": "offline"})

        queued = {f"killed-{n}": 51 + n for n in range(3)}
        await publish_commands(peer, queued)
        process.start()
        await peer.wait_answered(set(queued), 20)
        await asyncio.sleep(0.3)  # a second result would show up now
    finally:
        process.stop()
    assert states(peer) == ["online", "offline", "online"]
    assert all(len(peer.results[t]) == 1 for t in queued)
    assert {peer.results[t][0]["status"] for t in queued} == {"ok"}
    assert sorted(number for number, _, _ in pager_sim.received) == [50, 51, 52, 53], (
        process.stderr()
    )


@pytest.mark.faults
async def test_the_bridge_reconnects_when_aedes_restarts(
    aedes: Aedes, bridge: Bridge, pager_sim: PagerSimulator
) -> None:
    async with Peer(aedes.port, v5=False) as before:
        assert (await before.request("pager/60/action", {"action": "alert"}))["status"] == "ok"
        await before.wait_for(is_state("online"))
    await asyncio.to_thread(aedes.kill)
    await asyncio.sleep(1.0)  # the bridge finds the port closed a few times
    await asyncio.to_thread(aedes.start)

    # The new aedes knows nothing: no retained state, no session. The bridge reconnects by
    # itself, subscribes again and says online; commands sent from then on are answered.
    async with Peer(aedes.port, v5=False) as after:
        await after.wait_for(is_state("online"), 15)
        result = await after.request("pager/61/action", {"action": "alert"})
        assert result["status"] == "ok"
        assert (await after.request("pager/62/action", "alert"))["status"] == "ok"
    assert [number for number, _, _ in pager_sim.received] == [60, 61, 62]
    assert aedes.log().count("client-ready iotbridge-aedes tcp") == 2
