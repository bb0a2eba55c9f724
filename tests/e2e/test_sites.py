"""Many sites in one process: each its own transmitter and prefix, isolated from the others."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.faults.tools import sample
from tests.support import Peer, http_get, running, settings, started_sim

pytestmark = pytest.mark.broker


@pytest.fixture
async def second_sim() -> AsyncIterator[PagerSimulator]:
    async with started_sim() as sim:
        yield sim


def two_sites(tmp_path: Path, broker: Mosquitto, a: PagerSimulator, b: PagerSimulator) -> Bridge:
    path = tmp_path / "sites.yaml"
    path.write_text(
        f"""
sites:
  - name: north
    pager: {{url: "coap://127.0.0.1:{a.port}", timeout: 1, breaker_failures: 2}}
  - name: south
    topic_prefix: restaurants/south
    pager: {{url: "coap://127.0.0.1:{b.port}", timeout: 3}}
    max_in_flight: 10
"""
    )
    return Bridge(
        settings(
            config=str(path),
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
            mqtt_client_id="multi",
        )
    )


async def test_each_site_has_its_prefix_and_transmitter(
    tmp_path: Path,
    broker: Mosquitto,
    pager_sim: PagerSimulator,
    second_sim: PagerSimulator,
    peer: Peer,
) -> None:
    async with running(two_sites(tmp_path, broker, pager_sim, second_sim)) as bridge:
        assert [site.link.client_id for site in bridge.sites] == ["multi-north", "multi-south"]
        north = await peer.request("north/pager/5/action", {"action": "start", "label": "N"})
        south = await peer.request("restaurants/south/pager/5/action", {"action": "start"})
        assert north["status"] == south["status"] == "ok"
        assert [r[0] for r in pager_sim.received] == [5]
        assert [r[0] for r in second_sim.received] == [5]
        await peer.wait_for(lambda m: m[0] == "north/pager/5/event")
        await peer.wait_for(lambda m: m[0] == "restaurants/south/pager/5/event")
        await peer.wait_for(lambda m: m[0] == "restaurants/south/bridge/state")
        # A topic of no configured site is nobody's: the north site does not answer for it.
        unprefixed = await peer.request("north/pager/abc/action", "page")
        assert unprefixed["error"]["code"] == "invalid_topic"


async def test_a_dead_transmitter_does_not_delay_another_site(
    tmp_path: Path,
    broker: Mosquitto,
    pager_sim: PagerSimulator,
    second_sim: PagerSimulator,
    peer: Peer,
) -> None:
    async with running(two_sites(tmp_path, broker, pager_sim, second_sim)):
        await pager_sim.set_silent(True)  # north's transmitter stops answering
        for number in range(1, 6):
            await peer.publish(f"north/pager/{number}/action", '{"action":"start"}')
        started = time.monotonic()
        for number in range(1, 6):
            result = await peer.request(f"restaurants/south/pager/{number}/action", "start")
            assert result["status"] == "ok"
        assert time.monotonic() - started < 1.0  # not queued behind north's timeouts
        # North's commands are all answered too, quickly once its breaker opens.
        for number in range(1, 6):
            topic = f"north/pager/{number}/action/result"
            message = await peer.wait_for(lambda m: m[0] == topic, 20)  # noqa: B023
            assert b"upstream_" in message[1]


async def test_gauges_are_per_site(
    tmp_path: Path,
    broker: Mosquitto,
    pager_sim: PagerSimulator,
    second_sim: PagerSimulator,
    peer: Peer,
) -> None:
    """Each site's connection, transmitter statistics, watch mode and circuit are its own
    series: with one series for all, the last site to write would win."""
    async with running(two_sites(tmp_path, broker, pager_sim, second_sim)) as bridge:
        for number in (1, 2, 3):
            await peer.request(f"north/pager/{number}/action", {"action": "start"})
        await peer.request("restaurants/south/pager/1/action", {"action": "start"})
        await peer.request("north/pager/1/action", {"action": "start"})  # a refusal: still 3
        await peer.request("north/pager/2/action", {"action": "clear"})
        metrics = await http_get(bridge, "/metrics")
    for site in ("north", "south"):
        assert sample(metrics, "iotbridge_mqtt_connected", site=site) == 1
        assert sample(metrics, "iotbridge_circuit_state", site=site, upstream="pager") == 0
    assert sample(metrics, "iotbridge_pager_sessions", site="north") == 3
    assert sample(metrics, "iotbridge_pager_sessions", site="south") == 1
    # Active now, per site: the device's count above never goes down, this one does.
    assert sample(metrics, "iotbridge_pager_active_sessions", site="north") == 2
    assert sample(metrics, "iotbridge_pager_active_sessions", site="south") == 1
