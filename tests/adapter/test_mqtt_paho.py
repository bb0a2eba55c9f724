"""What paho-mqtt does on its own that bridge.mqtt works around, each shown against a real peer.

1. `Client.connect()` blocks its caller for the TCP connect and the TLS handshake: on an event
   loop, every site in the process would stall behind a broker that is slow to answer.
   bridge.mqtt.transport connects on the loop and hands paho the socket.
2. paho keeps its own in-flight window (20) whatever the broker's Receive Maximum says, and
   refuses to change it on an open connection. The link sets it from the CONNACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion

from bridge.contract.topics import Topics
from bridge.dev.mosquitto import Mosquitto
from bridge.mqtt.link import MqttLink
from bridge.mqtt.transport import PreparedClient
from bridge.ops.metrics import Metrics
from tests.support import settings

pytestmark = pytest.mark.broker


@contextlib.asynccontextmanager
async def mute_tls_port() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never answers the TLS ClientHello."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1000):
                pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_paho_connect_blocks_but_the_link_keeps_the_loop_running(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    async with mute_tls_port() as port:
        # paho alone: connect() holds its caller for the whole handshake timeout.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="blocking")
        client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
        client.connect_timeout = 0.5
        started = time.monotonic()
        with pytest.raises((TimeoutError, OSError)):
            await asyncio.to_thread(client.connect, "127.0.0.1", port)
        assert time.monotonic() - started >= 0.45

        # The link: the loop keeps ticking while the handshake waits, and it gives up in time.
        metrics = Metrics()
        env = {
            "mqtt_url": f"mqtts://127.0.0.1:{port}",
            "mqtt_ca_file": str(ca_file),
            "mqtt_op_timeout": "0.5",
            "mqtt_reconnect_min": "5",
            "mqtt_reconnect_max": "5",
        }
        link = MqttLink(settings(**env).mqtt, Topics().channels(), metrics)
        run = asyncio.create_task(link.run(_ignore))
        ticks, gaps = 0, 0.0
        last = time.monotonic()
        while time.monotonic() - started < 1.5:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps, last, ticks = max(gaps, now - last), now, ticks + 1
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    assert gaps < 0.2, f"the loop stalled for {gaps:.2f} s"
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() == 1


async def _ignore(_inbound: object) -> None:
    return None


async def test_paho_keeps_its_own_window_whatever_the_broker_allows() -> None:
    """Mosquitto's CONNACK says Receive Maximum 5; paho's window stays 20 and cannot be set
    while connected. (tests/adapter/test_mqtt_link.py shows the link keeping to 5.)"""
    with Mosquitto(extra="max_inflight_messages 5\n") as broker:
        announced: list[int | None] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="window", protocol=paho.MQTTv5)
        client.on_connect = lambda _c, _u, _f, _r, props: announced.append(
            getattr(props, "ReceiveMaximum", None)
        )
        client.connect("127.0.0.1", broker.port)
        try:
            while not announced:
                client.loop(0.1)
            assert announced == [5]
            assert client.max_inflight_messages == 20
            with pytest.raises(RuntimeError, match="not supported"):
                client.max_inflight_messages = 5
        finally:
            client.disconnect()


def test_paho_never_opens_a_socket_of_its_own() -> None:
    """The one hook the link relies on: reconnect() takes its socket from
    `_create_socket_connection`, so without a prepared socket it refuses instead of
    connecting (and blocking)."""
    client = PreparedClient(CallbackAPIVersion.VERSION2, client_id="prepared")
    client.connect_async("127.0.0.1", 1)
    with pytest.raises(ConnectionError, match="no connected socket"):
        client.reconnect()
