"""End-to-end fixtures: real Mosquitto, the T7470 simulator over UDP, the bridge, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from bridge.app import Bridge
from bridge.config import Settings
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.support import Peer, running, settings, started_sim

pytestmark = pytest.mark.broker

BridgeFactory = Callable[..., AbstractAsyncContextManager[Bridge]]


@pytest.fixture
async def pager_sim() -> AsyncIterator[PagerSimulator]:
    async with started_sim() as sim:
        yield sim


@pytest.fixture
def bridge_settings(broker: Mosquitto, pager_sim: PagerSimulator) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "mqtt_url": f"mqtt://127.0.0.1:{broker.port}",
            "mqtt_client_id": "iotbridge-test",
            "pager_url": f"coap://127.0.0.1:{pager_sim.port}",
            # Long enough for one CoAP retransmission (ACK_TIMEOUT 2-3 s): packets do get lost.
            "pager_timeout": "5",
            "pager_poll_interval": "0.2",
        }
        return settings(**(base | env))

    return make


@pytest.fixture
def bridge_at(bridge_settings: Callable[..., Settings]) -> BridgeFactory:
    """`async with bridge_at(pager_timeout="0.5") as bridge:` runs a bridge for the block."""

    def make(**env: str) -> AbstractAsyncContextManager[Bridge]:
        return running(Bridge(bridge_settings(**env)))

    return make


@pytest.fixture
async def bridge(bridge_at: BridgeFactory) -> AsyncIterator[Bridge]:
    async with bridge_at() as instance:
        yield instance


@pytest.fixture
async def peer(broker: Mosquitto) -> AsyncIterator[Peer]:
    async with Peer(broker.port) as client:
        yield client


# Schedule 28487 on device 1234, as `sensaphone.schedules` takes it.
SCHEDULE_28487 = "{'28487': {kind: default_schedule, device_id: 1234}}"


def sensaphone_env(sim: SensaphoneSimulator, **env: str) -> dict[str, str]:
    """Settings (as `bridge_at` takes them) for a bridge on `sim`'s demo account; `env` adds
    to or overrides them."""
    account = {
        "sensaphone_url": sim.url,
        "sensaphone_allow_insecure": "true",  # the simulator, over plain HTTP
        "sensaphone_user": "demo",
        "sensaphone_password": "demo-password",
    }
    return account | env
