"""The bridge runs on uvloop by default (`event_loop: uvloop`): the fault paths must hold there too.

uvloop is adopted on condition that a transmitter that dies and comes back is survived, as on
asyncio's own loop: both at the CoAP seam (the adapter test, re-run here) and end to end through
a running bridge, plus a broker restart. ICMP "port unreachable" must still fail a request at
once rather than after the timeout (uvloop reports errors on connected UDP sockets its own way).
Each test drives its own uvloop with `uvloop.run`, independent of pytest-asyncio's loop.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from bridge.app import Bridge
from bridge.coap.client import Transmitter
from bridge.dev.mosquitto import Mosquitto
from bridge.errors import UpstreamUnavailable
from tests.adapter import test_coap_transmitter as coap_tests
from tests.e2e import test_contract as contract
from tests.support import Peer, running, settings, started_sim

pytestmark = pytest.mark.broker


def on_uvloop() -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith("uvloop"), type(loop)


def test_transmitter_restart_at_the_coap_seam() -> None:
    async def scenario() -> None:
        on_uvloop()
        await coap_tests.test_transmitter_restart_is_survived()

    uvloop.run(scenario())


def test_nobody_listening_is_unavailable_at_once() -> None:
    async def scenario() -> None:
        on_uvloop()
        async with started_sim() as sim:
            port = sim.port
        tx = Transmitter(f"coap://127.0.0.1:{port}", timeout=2.0)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamUnavailable, match="unreachable"):
                await tx.request("GET", coap_tests.SESSIONS)
            assert time.monotonic() - started < 0.5  # ICMP, not the 2 s timeout
        finally:
            await tx.close()

    uvloop.run(scenario())


def test_transmitter_and_broker_restarts_end_to_end() -> None:
    def bridge(broker: Mosquitto, uri: str) -> Bridge:
        return Bridge(
            settings(
                mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
                mqtt_client_id="iotbridge-uvloop",
                pager_url=uri,
                pager_timeout="5",
            )
        )

    async def scenario(broker: Mosquitto) -> None:
        on_uvloop()
        async with (
            started_sim() as sim,
            running(bridge(broker, sim.uri)) as first,
            Peer(broker.port) as peer,
        ):
            # Stops the simulator, then brings a new one up on its port for a while.
            await contract.test_transmitter_restart(first, peer, sim)
        async with started_sim() as sim, running(bridge(broker, sim.uri)) as second:
            await contract.test_broker_restart(second, broker)

    with Mosquitto() as broker:
        uvloop.run(scenario(broker))
