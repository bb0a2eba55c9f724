"""A bridge left at MQTT 5 (the default) in front of aedes, which speaks MQTT 3.1.1 only.

aedes answers an MQTT 5 CONNECT with a 3.1.1 CONNACK, return code 1 ("unacceptable protocol
version"), and closes the connection. The operator must learn what to change from one clear
log line (not one per attempt), and the bridge must retry at its backoff, not hammer the broker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge.sim.pager.server import PagerSimulator
from tests.aedes import Aedes
from tests.faults.tools import BridgeProcess, sample

pytestmark = pytest.mark.aedes

ADVICE = "broker speaks MQTT 3.1.1 only: set mqtt.protocol"
WINDOW = 4.0  # seconds of retrying watched: about four attempts at the default backoff
REFUSED = "connection-error unacceptable protocol version"
MOST_PER_SECOND = 3  # connection attempts, at the default backoff (0.5 s doubling to 30 s)


def refused(aedes: Aedes) -> int:
    """Connections aedes refused for their protocol version, as it logged them."""
    return aedes.log().count(REFUSED)


async def test_an_mqtt5_bridge_says_once_to_set_the_protocol_and_does_not_spin(
    aedes: Aedes, pager_sim: PagerSimulator, tmp_path: Path
) -> None:
    process = BridgeProcess(
        {
            "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{aedes.port}",
            "IOTBRIDGE_MQTT_CLIENT_ID": "iotbridge-aedes-v5",
            "IOTBRIDGE_PAGER_URL": pager_sim.uri,
            # The defaults, not the tests' fast 0.05-0.5 s: what an operator's bridge does.
            "IOTBRIDGE_MQTT_RECONNECT_MIN": "0.5",
            "IOTBRIDGE_MQTT_RECONNECT_MAX": "30",
        },
        tmp_path / "bridge.log",
    )
    try:
        process.start()
        await asyncio.to_thread(aedes.wait_logged, REFUSED, 20)
        first, since = refused(aedes), time.monotonic()
        await asyncio.sleep(WINDOW)
        attempts = refused(aedes) - first
        rate = attempts / (time.monotonic() - since)
        metrics = await asyncio.to_thread(process.metrics)
        failures = sample(metrics, "iotbridge_mqtt_connect_failures_total", reason="protocol")
        total = refused(aedes)
    finally:
        process.stop()

    log = process.stderr()
    advice = [line for line in log.splitlines() if ADVICE in line]
    assert len(advice) == 1, f"{first + attempts} attempts: {log}"
    assert rate <= MOST_PER_SECOND, f"{attempts} attempts in {WINDOW} s: {log}"
    # Every refused attempt counted, under the reason `protocol`.
    assert first <= failures <= total, (failures, first, total, metrics)
    assert "client-ready" not in aedes.log()
