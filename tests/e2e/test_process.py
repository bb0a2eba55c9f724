"""The bridge as a process: SIGTERM drains and exits 0; SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.faults.tools import BridgeProcess
from tests.support import Peer

pytestmark = pytest.mark.broker


@pytest.fixture
def process(
    broker: Mosquitto, pager_sim: PagerSimulator, tmp_path: Path
) -> Iterator[BridgeProcess]:
    env = {
        "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
        "IOTBRIDGE_MQTT_CLIENT_ID": "iotbridge-process-test",
        "IOTBRIDGE_PAGER_URL": f"coap://127.0.0.1:{pager_sim.port}",
    }
    bridge = BridgeProcess(env, tmp_path / "bridge.stderr")
    yield bridge
    bridge.stop()


async def online(peer: Peer, count: int) -> None:
    await peer.wait_for(
        lambda _: sum(m[1] == b'{"state":"online"}' for m in peer.on("bridge/state")) >= count, 20
    )


async def test_sigterm_drains_publishes_offline_and_exits_zero(
    process: BridgeProcess, peer: Peer, pager_sim: PagerSimulator
) -> None:
    process.start()
    await online(peer, 1)
    pager_sim.latency = 0.5  # a command is still in flight when SIGTERM arrives
    await peer.publish("pager/7/action", '{"action":"start","transaction":"last"}')
    await asyncio.sleep(0.2)
    code = await asyncio.to_thread(process.signal, signal.SIGTERM)
    assert code == 0
    result = await peer.wait_for(lambda m: m[0] == "pager/7/action/result")
    assert json.loads(result[1])["status"] == "ok"
    await peer.wait_for(lambda m: m[0] == "bridge/state" and b"offline" in m[1])


async def test_sigkill_loses_nothing(process: BridgeProcess, peer: Peer) -> None:
    process.start()
    await online(peer, 1)
    await asyncio.to_thread(process.signal, signal.SIGKILL)
    await peer.wait_for(lambda m: m[0] == "bridge/state" and b"offline" in m[1])  # last will
    sent = {f"k{i}" for i in range(60)}
    for i in range(60):
        body = json.dumps({"action": "start", "transaction": f"k{i}"})
        await peer.publish(f"pager/{100 + i}/action", body)
    process.start()
    await online(peer, 2)

    def answered() -> set[str]:
        return {
            json.loads(m[1])["transaction"]
            for m in peer.messages
            if m[0].endswith("/action/result")
        }

    # Peer decodes each result once as it arrives: re-decoding every message on each arrival
    # (cubic in the message count) alone took ~20 s of this test's 30 s budget.
    await peer.wait_answered(sent, 30)
    assert answered() == sent
