"""bridge.mqtt.MqttLink against a real Mosquitto, with aiomqtt as the independent peer.

Broker faults are real ones: a Mosquitto that is stopped (SIGSTOP: its connections stay open
and nothing answers), restarted, restarted without its persistence file, or given an ACL that
refuses a topic; and a listener that accepts TCP connections and never says a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from bridge.config import MqttSettings
from bridge.contract.topics import Topics
from bridge.dev.mosquitto import Mosquitto, free_port
from bridge.errors import PublishRefused
from bridge.mqtt.link import Inbound, MqttLink
from bridge.ops.metrics import Metrics
from tests.faults.tools import properties
from tests.support import Peer, settings

pytestmark = pytest.mark.broker

Handler = Callable[[Inbound], Awaitable[None]]
# What the bridge's contract tells the link (commands on pager/+/action and
# schedule/+/timerange, bridge/state online and offline).
CHANNELS = Topics().channels()


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
    link = MqttLink(link_settings(broker.port), CHANNELS, metrics)
    async with running(link), Peer(broker.port) as peer:
        online = await peer.wait_for(lambda m: m[0] == "bridge/state")
        assert (json.loads(online[1]), online[2]) == ({"state": "online"}, True)  # retained
        for n in range(1, 101):
            await peer.publish(f"pager/{n}/action", f"cmd-{n}")
        await until(lambda: len(results(peer, "pager/")) >= 100, 10)
        assert sorted(results(peer, "pager/")) == sorted(f"cmd-{n}".encode() for n in range(1, 101))
        assert metrics.mqtt_connected.labels("default")._value.get() == 1
    async with Peer(broker.port) as peer:
        offline = await peer.wait_for(lambda m: m[0] == "bridge/state")
        assert json.loads(offline[1]) == {"state": "offline"}
    # Everything was acknowledged: nothing comes back on the next session.
    seen: list[Inbound] = []
    again = MqttLink(link_settings(broker.port), CHANNELS, Metrics())
    async with running(again, echo(again, seen)):
        await asyncio.sleep(0.5)
    assert seen == []


async def test_response_topic_correlation_and_expiry(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), CHANNELS, Metrics())
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
    link = MqttLink(link_settings(broker.port, mqtt_protocol="3.1.1"), CHANNELS, Metrics())
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


@contextlib.contextmanager
def paho_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """paho's own account of the packets it sends and receives (its debug log)."""
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="bridge.mqtt.paho"):
        yield lines
        lines.extend(r.getMessage() for r in caplog.records if r.name == "bridge.mqtt.paho")


def sent(lines: list[str], prefix: str, *, dup: int) -> list[int]:
    """Packet ids of the QoS 1 PUBLISHes to `prefix`... paho logged sending with DUP `dup`."""
    pattern = re.compile(rf"Sending PUBLISH \(d{dup}, q1, r\d, m(\d+)\), 'b'{re.escape(prefix)}")
    return [int(found[1]) for line in lines if (found := pattern.match(line))]


def most_in_flight(lines: list[str]) -> int:
    """The most PUBLISHes ever sent and not yet PUBACKed, from paho's log."""
    waiting: set[int] = set()
    most = 0
    for line in lines:
        if sent := re.match(r"Sending PUBLISH \(d\d, q1, r\d, m(\d+)\)", line):
            waiting.add(int(sent[1]))
            most = max(most, len(waiting))
        elif acked := re.match(r"Received PUBACK \(Mid: (\d+)\)", line):
            waiting.discard(int(acked[1]))
    return most


async def test_more_publishes_than_the_brokers_receive_maximum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mosquitto announces Receive Maximum 5 (its max_inflight_messages) but would not even
    drop a client that exceeds it; the link keeps to it anyway, as MQTT 5 requires."""
    with Mosquitto(extra="max_inflight_messages 5\n") as broker, paho_log(caplog) as lines:
        metrics = Metrics()
        link = MqttLink(link_settings(broker.port), CHANNELS, metrics)
        async with Peer(broker.port) as peer, running(link):
            await asyncio.gather(*(link.publish(f"out/{n}", b"%d" % n) for n in range(300)))
            await until(lambda: bool(peer.on("out/299")), 10)
            order = [int(m[1]) for m in peer.messages if m[0].startswith("out/")]
    assert most_in_flight(lines) == 5  # the window was used, never exceeded
    assert order == list(range(300))  # queued publishes go out in order
    assert metrics.mqtt_reconnects._value.get() == 0


async def test_broker_restart_mid_publish(broker: Mosquitto) -> None:
    """Publishes waiting for a PUBACK (or for their turn) when the connection drops are sent
    again on the next connection, promptly: none is lost, none fails."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), CHANNELS, metrics)
    count = 2000
    async with running(link):
        publishes = asyncio.gather(
            *(link.publish(f"restart/{n}", b"%d" % n, retain=True) for n in range(count))
        )
        await until(lambda: link._acks >= 100, 5)
        assert link._pending, "the broker must go while publishes wait for PUBACKs"
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


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """SIGSTOP the broker: its sockets stay open, the kernel still accepts, nothing answers."""
    assert broker.process is not None
    pid = broker.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_unacknowledged_publishes_are_resent_with_dup_on_the_resumed_session(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker freezes with publishes in flight; the link gives up on the connection (no
    PUBACK for op_timeout), reconnects once the broker is back, finds its session, and paho
    sends the unacknowledged publishes again with DUP set, under their packet ids."""
    metrics = Metrics()
    env = {"mqtt_op_timeout": "1"}
    link = MqttLink(link_settings(broker.port, **env), CHANNELS, metrics)
    with paho_log(caplog) as lines:
        async with Peer(broker.port) as peer, running(link):
            with frozen(broker):
                publishes = asyncio.gather(
                    *(link.publish(f"dup/{n}", b"%d" % n) for n in range(20))
                )
                await until(lambda: metrics.mqtt_connected.labels("default")._value.get() == 0, 5)
            async with asyncio.timeout(15):
                await publishes
            await until(lambda: len([m for m in peer.messages if m[0].startswith("dup/")]) >= 20, 5)
    first, again = sent(lines, "dup/", dup=0), sent(lines, "dup/", dup=1)
    assert len(first) == 20
    assert sorted(again) == sorted(first)  # every one, with DUP, under its own packet id
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() >= 1
    assert metrics.mqtt_sessions_lost._value.get() == 0  # the session was there to resume


@pytest.mark.parametrize(("expiry", "lost"), [("86400", 1), ("0", 0)], ids=["kept", "none-kept"])
async def test_a_lost_session_is_a_warning_and_a_metric(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture, expiry: str, lost: int
) -> None:
    """The broker comes back without its persistence file: our session, and whatever it held
    for us, is gone. The link says so, subscribes again and carries on. With
    `mqtt.session_expiry: 0` (MQTT 5) the broker was asked to keep nothing across a disconnect:
    no session back is no loss, so no warning and no metric."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port, mqtt_session_expiry=expiry), CHANNELS, metrics)
    async with running(link):
        broker.stop()
        for db in Path(broker.config_path).parent.glob("*.db"):
            db.unlink()
        broker.start()
        await until(lambda: metrics.mqtt_reconnects._value.get() >= 1 and link.ready, 10)
        async with Peer(broker.port) as peer:
            await peer.publish("pager/5/action", b"after")
            await peer.wait_for(lambda m: m[0] == "pager/5/action/result")
    assert metrics.mqtt_sessions_lost._value.get() == lost
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = [w for w in warnings if "the broker dropped our session" in w and "are lost" in w]
    assert len(said) == lost


async def test_a_refused_publish_is_not_delivered(broker: Mosquitto, tmp_path: Path) -> None:
    """PUBACK 0x87 (an ACL refusing the topic) fails the publish; it is counted, not taken as
    delivered; the connection stays up."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny refused/#\n", encoding="utf-8")
    with Mosquitto(acl_file=str(acl)) as guarded:
        metrics = Metrics()
        link = MqttLink(link_settings(guarded.port), CHANNELS, metrics)
        async with running(link):
            with pytest.raises(PublishRefused, match=r"Not authorized \(0x87\)"):
                await link.publish("refused/1", b"x")
            await link.publish("allowed/1", b"x")
        refused = metrics.mqtt_publish_refused.labels("not_authorized")._value.get()
    assert refused == 1
    assert metrics.mqtt_reconnects._value.get() == 0


async def test_ack_only_on_the_connection_it_came_on(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), CHANNELS, Metrics())
    seen: list[Inbound] = []

    async def keep(inbound: Inbound) -> None:
        seen.append(inbound)

    async with Peer(broker.port) as peer, running(link, keep):
        await peer.publish("pager/9/action", b"once")
        await until(lambda: bool(seen), 5)
        assert link._driver is not None
        link._driver.abort()  # the connection drops before the command is answered
        await until(lambda: len(seen) >= 2, 10)
        first, second = seen
        assert (first.topic, second.topic) == ("pager/9/action", "pager/9/action")
        assert second.generation == first.generation + 1
        assert second.dup  # the broker says it is a redelivery
        link.ack(first)  # stale: its packet id means nothing on the new connection
        link.ack(second)
        await asyncio.sleep(0.2)
    again = MqttLink(link_settings(broker.port), CHANNELS, Metrics())
    late: list[Inbound] = []
    async with running(again, keep_into(late)):
        await asyncio.sleep(0.5)
    assert late == []


async def test_a_lost_connection_cancels_a_blocked_handler(broker: Mosquitto) -> None:
    """The handler waits (a full window) when the connection drops: that wait is cancelled, the
    link reconnects at once, and the broker redelivers the message to the handler."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), CHANNELS, metrics)
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
        assert link._driver is not None
        link._driver.abort()
        async with asyncio.timeout(2):
            await cancelled.wait()
        await until(lambda: len(calls) >= 2, 5)
    assert [c.payload for c in calls] == [b"stuck", b"stuck"]
    assert calls[1].generation == calls[0].generation + 1


async def test_a_full_handler_stops_reading_from_the_socket(broker: Mosquitto) -> None:
    """While the handler does not take messages, at most about `receive_maximum` wait in the
    link: it stops reading, and the rest wait in the kernel and at the broker. QoS 0 is what
    no Receive Maximum limits, so the peer sends that."""
    link = MqttLink(link_settings(broker.port), CHANNELS, Metrics(), receive_maximum=10)
    release = asyncio.Event()
    handled: list[Inbound] = []

    async def slow(inbound: Inbound) -> None:
        await release.wait()
        handled.append(inbound)

    async with Peer(broker.port) as peer, running(link, slow):
        assert peer._client is not None
        for n in range(2000):
            await peer._client.publish(f"pager/{n % 50 + 1}/action", b"x" * 1000, qos=0)
        await asyncio.sleep(1.0)
        conn = link._conn
        assert conn is not None
        waiting = len(conn.inbox)
        paused = link._driver is not None and link._driver._paused
        release.set()
        await until(lambda: len(handled) >= 100, 10)
    assert paused
    assert waiting <= 10 + 1, waiting  # what the last read completed may add one


def keep_into(seen: list[Inbound]) -> Handler:
    async def keep(inbound: Inbound) -> None:
        seen.append(inbound)

    return keep


async def test_watchers_and_refusals(broker: Mosquitto) -> None:
    link = MqttLink(link_settings(broker.port), CHANNELS, Metrics())
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


# -- brokers that do not answer ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mute_listener() -> AsyncIterator[int]:
    """Accepts TCP connections and never sends a byte."""

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


async def test_no_connack_is_a_timeout() -> None:
    metrics = Metrics()
    async with mute_listener() as port:
        env = {"mqtt_op_timeout": "0.3", "mqtt_reconnect_min": "5", "mqtt_reconnect_max": "5"}
        link = MqttLink(link_settings(port, **env), CHANNELS, metrics)
        task = asyncio.create_task(link.run(echo(link)))
        await asyncio.sleep(0.6)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() == 1


async def test_a_silent_broker_is_dropped_by_the_keepalive(broker: Mosquitto) -> None:
    """paho's keepalive: a PINGREQ after a keepalive of silence, and the connection dropped when
    no PINGRESP follows within another."""
    metrics = Metrics()
    # Below the configurable minimum (5 s), to keep the test short: structs skip validation.
    mqtt = msgspec.structs.replace(
        link_settings(broker.port, mqtt_reconnect_min="5", mqtt_reconnect_max="5"), keepalive=1
    )
    link = MqttLink(mqtt, CHANNELS, metrics)
    async with running(link):
        with frozen(broker):
            started = time.monotonic()
            await until(lambda: metrics.mqtt_connected.labels("default")._value.get() == 0, 5)
            took = time.monotonic() - started
    assert 1 <= took <= 3.5, took
    assert metrics.mqtt_connect_failures.labels("timeout")._value.get() == 1


async def test_an_http_server_on_the_broker_port_is_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node's HTTP server answers our CONNECT at once with "HTTP/1.1 400 Bad Request"."""
    port = free_port()
    script = (
        "require('http').createServer((q, s) => s.end()).listen(+process.argv[1], '127.0.0.1',"
        " () => console.log('listening'))"
    )
    node = await asyncio.create_subprocess_exec(
        "node", "-e", script, str(port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert node.stdout is not None
        await node.stdout.readline()
        metrics = Metrics()
        env = {"mqtt_reconnect_min": "0.1", "mqtt_reconnect_max": "0.1"}
        link = MqttLink(link_settings(port, **env), CHANNELS, metrics)
        task = asyncio.create_task(link.run(echo(link)))
        await until(lambda: metrics.mqtt_connect_failures.labels("protocol")._value.get() >= 3, 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        node.kill()
        await node.wait()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines  # said once, however often it is retried
    assert "does not speak MQTT (its answer began with b'H')" in lines[0]


async def test_a_pause_does_not_outlive_its_connection(broker: Mosquitto) -> None:
    """Reading was paused (a full inbox) when the connection dropped: the next connection
    reads again, or it would never see its CONNACK."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port), CHANNELS, metrics, receive_maximum=5)
    release = asyncio.Event()

    async def stuck(_inbound: Inbound) -> None:
        await release.wait()

    async with Peer(broker.port) as peer, running(link, stuck):
        assert peer._client is not None
        for n in range(50):
            await peer._client.publish(f"pager/{n + 1}/action", b"x", qos=0)
        driver = link._driver
        assert driver is not None
        await until(lambda: driver._paused, 5)
        driver.abort()
        await until(lambda: metrics.mqtt_reconnects._value.get() >= 1 and link.ready, 10)
        assert not driver._paused


async def test_publishes_queued_while_the_socket_is_full_are_written(broker: Mosquitto) -> None:
    """paho asks for a write once, then queues quietly until it has written everything. When
    it asked while our buffer waited for the socket to drain, the link used to drop the
    request: paho's later packets sat in its queue, no PUBACK came, and the watchdog took the
    broker for dead (seen under a QoS 0 flood answered with results)."""
    metrics = Metrics()
    link = MqttLink(link_settings(broker.port, mqtt_op_timeout="5"), CHANNELS, metrics)
    payload = b"x" * 60_000
    async with running(link):
        driver = link._driver
        assert driver is not None
        with frozen(broker):  # the socket fills up: our buffer waits for it to drain
            sends = [link.publish_soon(f"out/{n % 50}", payload) for n in range(600)]
            await until(lambda: driver._writer, 5)
        async with asyncio.timeout(20):
            await asyncio.gather(*sends)
    assert metrics.mqtt_reconnects._value.get() == 0
