"""End-to-end against the second broker: aedes (MQTT 3.1.1), the T7470 simulator, the bridge.

The same shape as tests/e2e, with aedes in place of Mosquitto: the bridge is set to MQTT 3.1.1
(`mqtt.protocol`), since aedes refuses MQTT 5, and the peer speaks 3.1.1 as well.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.config import Settings
from bridge.sim.pager.server import PagerSimulator
from tests.aedes import Aedes
from tests.support import Peer, Received, running, settings, started_sim

pytestmark = pytest.mark.aedes

BridgeFactory = Callable[..., AbstractAsyncContextManager[Bridge]]


def states(peer: Peer) -> list[str]:
    """Every `bridge/state` the peer saw, in order."""
    return [p["state"] for p in peer.payloads("bridge/state") if p]


def is_state(state: str) -> Callable[[Received], bool]:
    """Matches a `bridge/state` message saying `state`."""

    def match(message: Received) -> bool:
        return message[0] == "bridge/state" and json.loads(message[1] or b"{}") == {"state": state}

    return match


class Certificates:
    """A trustme CA and a server certificate for 127.0.0.1, as PEM files."""

    def __init__(self, directory: Path) -> None:
        import trustme  # noqa: PLC0415 - a dev dependency, only the WSS tests need it

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = directory / "ca.pem"
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture
def aedes(certificates: Certificates) -> Iterator[Aedes]:
    """A fresh aedes for one test: TCP on `port`, WebSockets at /mqtt on `ws_port` and, with a
    certificate from `certificates.ca_file`, on `wss_port`."""
    with Aedes(tls=(str(certificates.cert_file), str(certificates.key_file))) as instance:
        yield instance


@pytest.fixture
async def pager_sim() -> AsyncIterator[PagerSimulator]:
    async with started_sim() as sim:
        yield sim


@pytest.fixture
def bridge_settings(aedes: Aedes, pager_sim: PagerSimulator) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "mqtt_url": f"mqtt://127.0.0.1:{aedes.port}",
            "mqtt_protocol": "3.1.1",
            "mqtt_client_id": "iotbridge-aedes",
            "pager_url": f"coap://127.0.0.1:{pager_sim.port}",
            "pager_timeout": "5",
            "pager_poll_interval": "0.2",
        }
        return settings(**(base | env))

    return make


@pytest.fixture
def bridge_at(bridge_settings: Callable[..., Settings]) -> BridgeFactory:
    """`async with bridge_at(mqtt_url=...) as bridge:` runs a bridge for the block."""

    def make(**env: str) -> AbstractAsyncContextManager[Bridge]:
        return running(Bridge(bridge_settings(**env)))

    return make


@pytest.fixture
async def bridge(bridge_at: BridgeFactory) -> AsyncIterator[Bridge]:
    async with bridge_at() as instance:
        yield instance


@pytest.fixture
async def peer(aedes: Aedes) -> AsyncIterator[Peer]:
    """A user's MQTT 3.1.1 client on aedes' TCP listener, subscribed to everything."""
    async with Peer(aedes.port, v5=False) as client:
        yield client
