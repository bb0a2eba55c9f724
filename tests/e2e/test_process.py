"""The bridge as a process: SIGTERM drains and exits 0; SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bridge.broker import Mosquitto
from bridge.sim.pager import PagerSimulator
from tests.support import Peer

pytestmark = pytest.mark.broker


class BridgeProcess:
    """`python -m bridge run` with its configuration in the environment."""

    def __init__(self, broker: Mosquitto, sim: PagerSimulator) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
        self.env.update(
            IOTBRIDGE_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
            IOTBRIDGE_MQTT_CLIENT_ID="iotbridge-process-test",
            IOTBRIDGE_PAGER_URL=f"coap://127.0.0.1:{sim.port}",
            IOTBRIDGE_HTTP_ADDR="127.0.0.1:0",
            IOTBRIDGE_MQTT_RECONNECT_MIN="0.05",
            IOTBRIDGE_MQTT_RECONNECT_MAX="0.5",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def process(broker: Mosquitto, pager_sim: PagerSimulator) -> Iterator[BridgeProcess]:
    bridge = BridgeProcess(broker, pager_sim)
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

    await peer.wait_for(lambda _: answered() >= sent, 30)
    assert answered() == sent
