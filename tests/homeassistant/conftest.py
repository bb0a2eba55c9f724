"""Fixtures of the Home Assistant tier: one real Home Assistant and one Mosquitto for the whole
tier (its one module), and per test a bridge process, the simulators, and a clean slate after.

Without a Python >= 3.13 the tier is skipped (test_home_assistant.py: one line saying so); a
failed install of Home Assistant, or an IOTBRIDGE_HA_PYTHON that is no usable Python, is a
failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from bridge.dev.demo import DEMO_PASSWORD
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.faults.tools import BridgeProcess
from tests.homeassistant import server
from tests.homeassistant.client import HomeAssistant
from tests.support import Peer, started_sim

SCHEDULES = "{'28487': {kind: default_schedule, device_id: 1234}}"
# Home Assistant log lines that are about nothing the bridge did.
_UNRELATED = re.compile(r"Skipping pip installation|We found a custom integration")

BridgeFactory = Callable[..., Awaitable[BridgeProcess]]


@pytest.fixture(scope="session")
def ha_venv() -> Path:
    found = server.search()
    if isinstance(found, server.InstallFailed):
        pytest.fail(str(found), pytrace=False)
    if found is None:
        pytest.skip(server.describe_missing_python())
    try:
        return server.installed(*found)
    except server.InstallFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def ha_broker() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="module")
def ha_server(
    ha_venv: Path, ha_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[server.HomeAssistantServer]:
    with server.running(ha_venv, tmp_path_factory.mktemp("hass"), ha_broker.port) as running:
        yield running


@pytest.fixture
async def ha(ha_server: server.HomeAssistantServer) -> AsyncIterator[HomeAssistant]:
    """A client of the tier's Home Assistant; afterwards the broker's retained messages are
    cleared (so HA drops what the test's bridge announced) and HA's log must hold nothing new
    at WARNING or above."""
    logged = len(ha_server.log_lines())
    async with HomeAssistant(ha_server) as client:
        yield client
        # Discovery first: HA must not see the bridge's state emptied under live entities.
        await clear_retained(ha_server.mqtt_port, "homeassistant/#")
        await until_no_mqtt_entities(client)
        await clear_retained(ha_server.mqtt_port, "#")
    new = [line for line in ha_server.log_lines()[logged:] if not _UNRELATED.search(line)]
    problems = [line for line in new if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert not problems, "Home Assistant logged:\n" + "\n".join(new)


async def clear_retained(port: int, topic_filter: str) -> None:
    """Empty every retained message under `topic_filter`, as on a fresh broker."""
    retained: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier="ha-tier-cleaner") as client:
        await client.subscribe(topic_filter, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    if message.retain and message.payload:
                        retained.add(message.topic.value)
        except TimeoutError:
            pass
        for topic in sorted(retained):
            await client.publish(topic, b"", qos=1, retain=True)


async def until_no_mqtt_entities(client: HomeAssistant) -> None:
    async def mqtt_entities() -> list[str]:
        return [e["entity_id"] for e in await client.entities() if e["platform"] == "mqtt"]

    await client.until(mqtt_entities, lambda left: not left, 30)


@pytest.fixture
async def peer(ha_broker: Mosquitto) -> AsyncIterator[Peer]:
    async with Peer(ha_broker.port) as client:
        yield client


@pytest.fixture
async def pager_sim() -> AsyncIterator[PagerSimulator]:
    async with started_sim() as sim:
        yield sim


@pytest.fixture
def sensaphone() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator(session_lifetime=3600) as sim:
        yield sim


@pytest.fixture
def bridge(
    ha_broker: Mosquitto,
    pager_sim: PagerSimulator,
    sensaphone: SensaphoneSimulator,
    tmp_path: Path,
) -> Iterator[BridgeFactory]:
    """`await bridge(IOTBRIDGE_PAGER_NUMBERS="66")` starts `python -m bridge run` with discovery
    on, the tier's broker and both simulators, and returns once it is ready (/readyz), or fails
    with what it wrote to stderr; every bridge is killed after the test."""
    started: list[BridgeProcess] = []

    async def make(**env: str) -> BridgeProcess:
        base = {
            "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{ha_broker.port}",
            "IOTBRIDGE_MQTT_CLIENT_ID": "iotbridge-ha",
            "IOTBRIDGE_PAGER_URL": f"coap://127.0.0.1:{pager_sim.port}",
            "IOTBRIDGE_DISCOVERY_ENABLED": "true",
            "IOTBRIDGE_SENSAPHONE_URL": sensaphone.url,
            "IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE": "true",  # the simulator speaks plain HTTP
            "IOTBRIDGE_SENSAPHONE_USER": "demo",
            "IOTBRIDGE_SENSAPHONE_PASSWORD": DEMO_PASSWORD,
            "IOTBRIDGE_SENSAPHONE_SCHEDULES": SCHEDULES,
        }
        process = BridgeProcess(base | env, tmp_path / f"bridge-{len(started)}.stderr")
        process.start()
        started.append(process)
        await until_ready(process)
        return process

    yield make
    for process in started:
        process.stop()


async def until_ready(process: BridgeProcess) -> None:
    """Until the bridge's /readyz says ready; AssertionError with its stderr if it exits or
    is not ready within 20 s."""
    url = f"http://127.0.0.1:{process.http_port}/readyz"
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(200):
            if process.process is None or process.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the bridge did not become ready:\n{process.stderr()}")
