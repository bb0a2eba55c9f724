"""bridge.mqtt.MqttLink against a real Mosquitto, with aiomqtt (over paho) as the independent peer.

Plus two fake brokers on a raw socket, for what Mosquitto will not do on demand: never answer
the CONNECT, or answer it and then fall silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from bridge import mqttwire
from bridge.broker import Mosquitto
from bridge.config import MqttSettings
from bridge.metrics import Metrics
from bridge.mqtt import Inbound, MqttLink
from bridge.mqttconn import Connection, LinkError
from bridge.topics import Topics
from tests.faults.tools import properties
from tests.support import Peer, settings

pytestmark = pytest.mark.broker

Handler = Callable[[Inbound], Awaitable[None]]


def link_settings(port: int, **env: str) -> MqttSettings:
    base = {"mqtt_url": f"mqtt://127.0.0.1:{port}", "mqtt_client_id": "link-test"}
    return settings(**(base | env)).mqtt


def echo(link: MqttLink, seen: list[Inbound] | None = None) -> Handler:
    """Answer every command on `<topic>/result` (and its Response Topic), then acknowledge it."""

    async def handle(inbound: Inbound) -> None:
        if seen is not None:
            seen.append(inbound)
        sends = [link.publish(f"{inbound.topic}/result", inbound.payload)]
        if inbound.response_topic:
            response = link.publish(
                inbound.response_topic, inbound.payload, correlation=inbound.correlation
            )
            sends.append(response)
        await asyncio.gather(*sends)
        link.ack(inbound)

    return handle


@contextlib.asynccontextmanager
async def running(
    link: MqttLink, handler: Handler | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run(handler or echo(link)))
    try:
        async with asyncio.timeout(10):
            while not link.ready:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield task
    finally:
        await link.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(done: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if done():
                return
            await asyncio.sleep(0.01)


def results(peer: Peer, prefix: str) -> list[bytes]:
    return [m[1] for m in peer.messages if m[0].startswith(prefix) and m[0].endswith("/result")]


async def test_commands_in_results_out_and_state(broker: Mosquitto) -> None:
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), Topics(), metrics)
    async with running(link), Peer(broker.port) as peer:
        online = await peer.wait_for(lambda m: m[0] == "bridge/state")
        assert (json.loads(online[1]), online[2]) == ({"state": "online"}, True)  # retained
        for n in range(1, 101):
            await peer.publish(f"pager/{n}/action", f"cmd-{n}")
        await until(lambda: len(results(peer, "pager/")) >= 100, 10)
        assert sorted(results(peer, "pager/")) == sorted(f"cmd-{n}".encode() for n in range(1, 101))
        assert metrics.mqtt_connected._value.get() == 1
    async with Peer(broker.port) as peer:
        offline = await peer.wait_for(lambda m: m[0] == "bridge/state")
        assert json.loads(offline[1]) == {"state": "offline"}
    # Everything was acknowledged: nothing comes back on the next session.
    seen: list[Inbound] = []
    again = MqttLink(link_settings(broker.port), Topics(), Metrics())
    async with running(again, echo(again, seen)):
        await asyncio.sleep(0.5)
    assert seen == []


async def test_response_topic_correlation_and_expiry(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), Topics(), Metrics())
    seen: list[Inbound] = []
    async with Peer(broker.port) as peer, running(link, echo(link, seen)):
        props = properties(
            ResponseTopic="client/7/reply", CorrelationData=b"\x00corr", MessageExpiryInterval=60
        )
        await peer.publish("pager/7/action", b"page", properties=props)
        reply = await peer.wait_for(lambda m: m[0] == "client/7/reply")
    assert reply[1] == b"page"
    assert reply[3].CorrelationData == b"\x00corr"
    (inbound,) = seen
    assert (inbound.response_topic, inbound.correlation) == ("client/7/reply", b"\x00corr")
    assert inbound.expiry is not None
    assert 0 < inbound.expiry <= 60


async def test_mqtt_311(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port, mqtt_protocol="3.1.1"), Topics(), Metrics())
    seen: list[Inbound] = []
    async with Peer(broker.port, v5=False) as peer, running(link, echo(link, seen)):
        assert not link.v5
        for n in range(1, 21):
            await peer.publish(f"schedule/{n}/timerange", b"read")
        await until(lambda: len(results(peer, "schedule/")) >= 20, 10)
        # A 3.1.1 session has no properties: a correlation is dropped, not an error.
        await link.publish("client/x", b"y", correlation=b"ignored")
    assert all(i.response_topic is None and i.expiry is None for i in seen)
    assert len(seen) == 20


async def test_more_publishes_than_the_brokers_receive_maximum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    most = 0
    transmit = Connection._transmit

    def counting(self: Connection, *args: Any) -> None:
        nonlocal most
        transmit(self, *args)
        most = max(most, len(self._pending))

    monkeypatch.setattr(Connection, "_transmit", counting)
    with Mosquitto(extra="max_inflight_messages 5\n") as broker:
        metrics = Metrics()
        link = MqttLink(link_settings(broker.port), Topics(), metrics)
        async with Peer(broker.port) as peer, running(link):
            await asyncio.gather(*(link.publish(f"out/{n}", b"%d" % n) for n in range(300)))
            await until(lambda: bool(peer.on("out/299")), 10)
            order = [int(m[1]) for m in peer.messages if m[0].startswith("out/")]
    assert most == 5  # the window was used, never exceeded
    assert order == list(range(300))  # queued publishes go out in order
    assert metrics.mqtt_reconnects._value.get() == 0  # Mosquitto would drop us for exceeding it


async def test_broker_restart_mid_publish(broker: Mosquitto) -> None:
    """Publishes waiting for a PUBACK (or for their turn) when the connection drops are sent
    again on the next connection, promptly: none is lost, none fails."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), Topics(), metrics)
    count = 2000
    async with running(link):
        publishes = asyncio.gather(
            *(link.publish(f"restart/{n}", b"%d" % n, retain=True) for n in range(count))
        )
        conn = link._conn
        assert conn is not None
        await until(lambda: conn._acks >= 100, 5)
        assert conn._pending, "the broker must go while publishes wait for PUBACKs"
        # SIGTERM: Mosquitto saves what it acknowledged. (After a SIGKILL it loses what it
        # acknowledged since its last save, a broker property tests/faults measures.)
        broker.stop()
        await asyncio.sleep(0.5)
        broker.start()
        restarted = time.monotonic()
        async with asyncio.timeout(20):
            await publishes
        took = time.monotonic() - restarted
        assert metrics.mqtt_reconnects._value.get() >= 1
    async with Peer(broker.port) as peer:
        await until(lambda: len(peer.messages) >= count, 10)
        retained = {m[0] for m in peer.messages if m[0].startswith("restart/") and m[2]}
    assert retained == {f"restart/{n}" for n in range(count)}
    assert took < 5, took


async def test_ack_only_on_the_connection_it_came_on(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), Topics(), Metrics())
    seen: list[Inbound] = []

    async def keep(inbound: Inbound) -> None:
        seen.append(inbound)

    async with Peer(broker.port) as peer, running(link, keep):
        await peer.publish("pager/9/action", b"once")
        await until(lambda: bool(seen), 5)
        conn = link._conn
        assert conn is not None
        conn.abort(LinkError("network", "dropped by the test"))  # before it is answered
        await until(lambda: len(seen) >= 2, 10)
        first, second = seen
        assert (first.topic, second.topic) == ("pager/9/action", "pager/9/action")
        assert second.generation == first.generation + 1
        link.ack(first)  # stale: its packet id means nothing on the new connection
        link.ack(second)
        await asyncio.sleep(0.2)
    again = MqttLink(link_settings(broker.port), Topics(), Metrics())
    late: list[Inbound] = []
    async with running(again, keep_into(late)):
        await asyncio.sleep(0.5)
    assert late == []


async def test_a_lost_connection_cancels_a_blocked_handler(broker: Mosquitto) -> None:
    """The handler waits (a full window) when the connection drops: that wait is cancelled, the
    link reconnects at once, and the broker redelivers the message to the handler."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), Topics(), metrics)
    calls: list[Inbound] = []
    cancelled = asyncio.Event()
    never = asyncio.Event()

    async def blocked_first(inbound: Inbound) -> None:
        calls.append(inbound)
        if len(calls) == 1:
            try:
                await never.wait()  # like dispatch's submit() waiting for a free slot
            except asyncio.CancelledError:
                cancelled.set()
                raise
        link.ack(inbound)

    async with Peer(broker.port) as peer, running(link, blocked_first):
        await peer.publish("pager/3/action", b"stuck")
        await until(lambda: bool(calls), 5)
        conn = link._conn
        assert conn is not None
        conn.abort(LinkError("network", "dropped by the test"))
        async with asyncio.timeout(2):
            await cancelled.wait()
        await until(lambda: len(calls) >= 2, 5)
    assert [c.payload for c in calls] == [b"stuck", b"stuck"]
    assert calls[1].generation == calls[0].generation + 1


def keep_into(seen: list[Inbound]) -> Handler:
    async def keep(inbound: Inbound) -> None:
        seen.append(inbound)

    return keep


async def test_watchers_and_refusals(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), Topics(), Metrics())
    watched: list[tuple[str, bytes]] = []
    link.watch("homeassistant/+/iotbridge/#", lambda t, p: watched.append((t, p)))
    async with Peer(broker.port) as peer, running(link):
        await peer.publish("homeassistant/sensor/iotbridge/a/config", b"{}")
        await peer.publish("homeassistant/sensor/other/a/config", b"{}")
        await until(lambda: bool(watched), 5)
        for topic in ("pager/+/action", "pager/#", "", "$SYS/x"):
            with pytest.raises(ValueError, match="refusing"):
                await link.publish(topic, b"")
    assert watched == [("homeassistant/sensor/iotbridge/a/config", b"{}")]


# -- fake brokers --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_broker(answer: bytes | None) -> AsyncIterator[tuple[int, list[bytes]]]:
    """Accepts connections; answers the first read with `answer` (if any), then stays silent."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))
        if answer is not None:
            writer.write(answer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1000):
                received.append(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()


async def test_no_connack_is_a_timeout() -> None:
    metrics = Metrics()
    async with fake_broker(None) as (port, _):
        env = {"mqtt_op_timeout": "0.3", "mqtt_reconnect_min": "5", "mqtt_reconnect_max": "5"}
        link = MqttLink(link_settings(port, **env), Topics(), metrics)
        task = asyncio.create_task(link.run(echo(link)))
        await asyncio.sleep(0.6)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() == 1


async def test_a_silent_broker_is_dropped_after_one_and_a_half_keepalives() -> None:
    metrics = Metrics()
    async with fake_broker(b"\x20\x03\x00\x00\x00") as (port, received):
        # Below the configurable minimum (5 s), to keep the test short: structs skip validation.
        mqtt = msgspec.structs.replace(
            link_settings(port, mqtt_reconnect_min="5", mqtt_reconnect_max="5"), keepalive=1
        )
        link = MqttLink(mqtt, Topics(), metrics)
        task = asyncio.create_task(link.run(echo(link)))
        await asyncio.sleep(2.6)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # It asked (SUBSCRIBE, then PINGREQ when nothing came back) before giving up.
    assert mqttwire.PINGREQ in b"".join(received[1:])
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() == 1
