"""The broker session on paho-mqtt: connect, subscribe, hand commands over, publish, acknowledge.

paho-mqtt does the protocol (packets, packet ids, QoS 1 flows, the resend of unacknowledged
publishes with DUP after a reconnect, keepalive, WebSockets); `bridge.mqtt.transport` runs it on
the asyncio loop; this module is the session policy the bridge needs on top:

- A persistent session under a fixed client id (clean start off, session expiry configurable),
  so commands published while the bridge is down are delivered when it returns. A CONNACK
  without "session present" where a session was expected is a WARNING and
  `iotbridge_mqtt_sessions_lost_total`: whatever the broker had queued for us is gone.
- Manual acknowledgement (paho's `manual_ack`): an inbound QoS 1 command is PUBACKed only when
  `ack()` is called, which the dispatcher does after the command's result was published and
  acknowledged. A PUBACK only ever goes out on the connection the message arrived on: packet ids
  mean nothing on another connection, and the broker redelivers what was not acknowledged.
- Retained `bridge/state` online on every (re)connect, offline as the last will and on shutdown.
- Reconnect with jittered exponential backoff, resubscribing each time.
- `publish_soon()` hands the message to paho at once and returns a future for its PUBACK. paho
  keeps every unacknowledged QoS 1 publish across reconnects and sends it again (DUP) on the
  next connection, so a publish simply waits out an outage; at most `buffer` wait (beyond that
  `Overloaded`, counted in `iotbridge_outbound_dropped_total`). A PUBACK with a reason code of
  0x80 or more means *not delivered*: the future fails with `PublishRefused`, logged and counted
  in `iotbridge_mqtt_publish_refused_total`, never a silent success.
- In-flight publishes follow the broker's Receive Maximum (MQTT 5; 100 towards a 3.1.1 broker):
  past it they wait in the link, in order, and go to paho as PUBACKs make room. paho's own
  window is off: it ignores the broker's value and re-scans every message on each PUBACK.
- Back-pressure reaches the socket: the handler is awaited for each command before the next is
  handed over, and when `receive_maximum` messages wait unhandled the link stops reading from
  the broker (nothing of ours awaits a PUBACK then, so nothing is starved of one).
- Bounded intake whatever a publisher sends. MQTT 5: the CONNECT says the largest packet the
  bridge takes (`max_payload` plus room for topic and properties), so the broker discards larger
  ones. Any protocol: a payload over `max_payload` is not kept (only its size, for the answer),
  and a QoS 0 command arriving while `inbox_limit` messages wait is handed to `shed` (answered
  `overloaded`) instead of queued: QoS 0 has no Receive Maximum to hold it back, and reading
  cannot pause while our own publishes wait for PUBACKs.
- A lost connection ends every wait on it: the set-up stops, and the reader's wait for the
  handler (a full window) is cancelled so that the link reconnects at once. A silent broker is
  dropped too: paho's keepalive (no PINGRESP within a keepalive), or no PUBACK for `op_timeout`
  while publishes wait.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttSettings, broker_address, client_id_or_default
from bridge.errors import BridgeError, Overloaded, PublishRefused
from bridge.mqtt.names import Channels, is_publishable
from bridge.mqtt.transport import PahoDriver, PreparedClient, open_socket
from bridge.ops.metrics import Metrics

log = logging.getLogger("bridge.mqtt")

T = TypeVar("T")

BROKER_DROPPED: Final = "$SYS/broker/publish/messages/dropped"
# CONNACK reasons that mean "your credentials" (paho maps 3.1.1's 4 and 5 to these too).
_NOT_AUTHORIZED: Final = frozenset({0x86, 0x87})
# "Unsupported protocol version" (paho maps 3.1.1's 1 to it).
_WRONG_PROTOCOL: Final = 0x84
# In-flight publishes towards an MQTT 3.1.1 broker, which cannot say what it allows.
_WINDOW_311: Final = 100
# Room in the Maximum Packet Size (MQTT 5) beyond the payload: fixed header, topic, Response
# Topic, Correlation Data and user properties of any sane command.
PACKET_ROOM: Final = 65536

Held = tuple[str, bytes, bool, "Properties | None", "asyncio.Future[None]"]

Handler = Callable[["Inbound"], Awaitable[None]]
Shed = Callable[["Inbound"], None]
ConnectHook = Callable[[], Awaitable[None]]
Watcher = Callable[[str, bytes], None]


class Inbound:
    """One received command message, with what is needed to answer and acknowledge it."""

    __slots__ = (
        "correlation",
        "dup",
        "expiry",
        "generation",
        "mid",
        "payload",
        "qos",
        "received",
        "response_topic",
        "retain",
        "size",
        "topic",
    )

    def __init__(
        self, topic: str, message: paho.MQTTMessage, generation: int, max_payload: int = 1 << 28
    ) -> None:
        self.topic = topic
        self.size = len(message.payload)
        # An oversized payload is not kept: only its size is needed to answer it.
        self.payload = bytes(message.payload) if self.size <= max_payload else b""
        self.mid: int = message.mid
        self.qos: int = message.qos
        self.retain: bool = message.retain
        self.dup: bool = message.dup
        self.generation = generation
        self.received = time.perf_counter()
        props = getattr(message, "properties", None)
        self.response_topic: str | None = getattr(props, "ResponseTopic", None)
        self.correlation: bytes | None = getattr(props, "CorrelationData", None)
        # Remaining lifetime the broker reports (MQTT v5 Message Expiry Interval), seconds.
        self.expiry: int | None = getattr(props, "MessageExpiryInterval", None)


class LinkError(Exception):
    """Why a connection attempt or a connection ended; `reason` labels the failure metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # not_authorized, refused, protocol, tls, timeout or network


class _Connection:
    """What lives and dies with one connection."""

    def __init__(self, generation: int) -> None:
        loop = asyncio.get_running_loop()
        self.generation = generation
        self.connack: asyncio.Future[tuple[bool, ReasonCode, Properties | None]] = (
            loop.create_future()
        )
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: LinkError | None = None
        self.subscribing: dict[int, asyncio.Future[list[int]]] = {}
        # Watched messages that arrived before the connect hooks ran (retained ones, right after
        # the SUBACK): delivered after them, so a hook can reset what a watcher collects.
        self.early: list[tuple[Watcher, str, bytes]] | None = []
        self.inbox: deque[Inbound] = deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.up = False

    def fail(self, error: LinkError) -> None:
        """The connection ended (the first reason given wins); every wait on it ends."""
        if self.error is not None:
            return
        self.error = error
        self.up = False
        if not self.closed.done():
            self.closed.set_result(None)
        self.connack.cancel()
        for waiter in self.subscribing.values():
            waiter.cancel()
        if self.reader is not None:
            self.reader.cancel()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, unless the connection ends first (then its LinkError)."""
        work = asyncio.ensure_future(awaitable)
        await asyncio.wait((work, self.closed), return_when=asyncio.FIRST_COMPLETED)
        if work.done() and not work.cancelled():
            return work.result()
        if not work.done():
            work.cancel()
        assert self.error is not None
        raise LinkError(self.error.reason, str(self.error))


class MqttLink:
    """Owns the broker session. Constructing it does no I/O; `run()` does."""

    def __init__(
        self,
        settings: MqttSettings,
        channels: Channels,
        metrics: Metrics,
        *,
        receive_maximum: int = 100,
        max_payload: int = 1 << 20,
        inbox_limit: int = 1000,
        buffer: int = 10_000,
        site: str = "default",
        reconnect_wait: Callable[[int], float] | None = None,
    ) -> None:
        self._settings = settings
        self._connected_gauge = metrics.child(metrics.mqtt_connected, site)
        self._channels = channels
        self._metrics = metrics
        self._receive_maximum = max(1, min(receive_maximum, 65535))
        self._max_payload = max_payload
        self._inbox_limit = max(inbox_limit, self._receive_maximum)
        self._reconnect_wait = reconnect_wait
        self._shed: Shed | None = None
        self._buffer = buffer
        self._client = self._new_client()
        self._driver: PahoDriver | None = None
        self._conn: _Connection | None = None
        self._generation = 0
        self._had_session = False
        self._last_failure: str | None = None
        self._stopping = False
        self._pending: dict[int, asyncio.Future[None]] = {}  # our publishes awaiting PUBACK
        self._pending_topics: dict[int, str] = {}  # their topics, for a refusal's log line
        # Publishes past the broker's Receive Maximum, in order, until PUBACKs make room.
        self._held: deque[Held] = deque()
        self._window = _WINDOW_311
        self._acks = self._acks_seen = 0
        self._progress_at = 0.0
        self._on_connect: list[ConnectHook] = []
        self._watchers: list[tuple[str, Watcher]] = []
        self.ready = False

    @property
    def client_id(self) -> str:
        return client_id_or_default(self._settings)

    @property
    def v5(self) -> bool:
        return self._settings.protocol == "5"

    def on_connect(self, hook: ConnectHook) -> None:
        """Run `hook` after every (re)connect, once subscriptions are in place."""
        self._on_connect.append(hook)

    def watch(self, topic_filter: str, watcher: Watcher) -> None:
        """Also subscribe to `topic_filter` (never shared) and pass its messages to `watcher`."""
        self._watchers.append((topic_filter, watcher))

    # -- the paho client ---------------------------------------------------------------------

    def _new_client(self) -> PreparedClient:
        settings, address = self._settings, broker_address(self._settings)
        client = PreparedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self.v5 else False,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            transport="websockets" if address.websocket else "tcp",
            reconnect_on_failure=False,  # the link reconnects, with its own backoff
            manual_ack=True,
        )
        if address.websocket:
            client.ws_set_options(path=address.path)
        client.connect_timeout = settings.op_timeout  # bounds paho's WebSocket upgrade
        # paho's own window re-scans every unacknowledged message on each PUBACK and ignores the
        # broker's Receive Maximum anyway (tests/adapter/test_mqtt_paho.py): the link keeps the
        # window itself (`_window`, `_held`), and paho's is off.
        client.max_inflight_messages_set(0)
        channels = self._channels
        client.will_set(channels.state_topic, channels.offline, qos=1, retain=True)
        if address.username is not None or address.password is not None:
            client.username_pw_set(address.username, address.password)
        if self.v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = settings.session_expiry
            properties.ReceiveMaximum = self._receive_maximum
            properties.MaximumPacketSize = self._max_payload + PACKET_ROOM
            client.connect_async(
                address.host,
                address.port,
                settings.keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            client.connect_async(address.host, address.port, settings.keepalive)
        client.enable_logger(logging.getLogger("bridge.mqtt.paho"))
        client.on_connect = self._connack
        client.on_disconnect = self._disconnected
        client.on_subscribe = self._suback
        client.on_publish = self._puback
        client.on_message = self._received
        return client

    # -- connection lifecycle ------------------------------------------------------------------

    async def run(self, handler: Handler, shed: Shed | None = None) -> None:
        """Connect, subscribe and feed messages to `handler`, reconnecting until `stop()`.

        `handler` is awaited for each command message before the next is handed over: it
        applies back-pressure by not returning while the bridge is full. If the connection is
        lost meanwhile, that wait is cancelled (so `handler` must be safe to cancel while it
        waits) and the message is left to the broker to redeliver. `shed` gets the QoS 0
        commands that arrive while the inbox is full, at once (it must not block).
        """
        self._shed = shed
        self._driver = PahoDriver(self._client)
        self._driver.on_misc = self._watchdog
        attempt = 0
        try:
            while not self._stopping:
                was_up = False
                try:
                    was_up = await self._session(handler)
                except LinkError as exc:
                    self._report(exc)
                if self._stopping:
                    break
                attempt = 0 if was_up else attempt
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                self._metrics.mqtt_reconnects.inc()
        finally:
            for waiter in [*self._pending.values(), *(held[4] for held in self._held)]:
                waiter.cancel()
            self._pending.clear()
            self._pending_topics.clear()
            self._held.clear()

    def _report(self, exc: LinkError) -> None:
        """Count every failure; log it once until the link is up again or the reason changes
        (a broker that is down for an hour, or a protocol mismatch, is one line, not hundreds)."""
        self._metrics.mqtt_connect_failures.labels(exc.reason).inc()
        text = str(exc)
        if text == self._last_failure:
            log.debug("MQTT link still down: %s", text)
            return
        self._last_failure = text
        if exc.reason == "not_authorized":
            log.warning(
                "MQTT broker refused our credentials or client id (user %r): %s; "
                "check mqtt.username/password; retrying with backoff",
                broker_address(self._settings).username,
                exc,
            )
        else:
            log.warning("MQTT link down: %s", exc)

    async def _session(self, handler: Handler) -> bool:
        """One connection, from connect to loss; True if it got as far as being up."""
        conn = await self._connect()
        try:
            await conn.wait(asyncio.wait_for(self._set_up(conn), self._op))
            self._up(conn)
            for hook in self._on_connect:
                await hook()
            early, conn.early = conn.early or [], None
            for watcher, topic, payload in early:
                watcher(topic, payload)
            if conn.error is None:
                conn.reader = asyncio.create_task(self._read(conn, handler), name="mqtt-reader")
                conn.reader.add_done_callback(self._reader_done(conn))
            await conn.closed
        except TimeoutError as exc:
            self._drop(conn, LinkError("timeout", f"no SUBACK or PUBACK within {self._op:g} s"))
            raise LinkError("timeout", f"subscribing timed out after {self._op:g} s") from exc
        except asyncio.CancelledError:
            self._disconnect(conn)  # shutting down: a clean DISCONNECT, so no will
            raise
        finally:
            self._drop(conn, LinkError("network", "session ended"))
            self._down()
        reader = conn.reader
        if reader is not None and reader.done() and not reader.cancelled():
            failure = reader.exception()
            if failure is not None:
                raise failure
        assert conn.error is not None
        raise conn.error

    async def _connect(self) -> _Connection:
        address = broker_address(self._settings)
        where = f"{address.host}:{address.port}"
        self._generation += 1
        conn = self._conn = _Connection(self._generation)
        tls = self._tls_context() if address.tls else None
        try:
            async with asyncio.timeout(self._op):
                sock = await open_socket(address.host, address.port, tls)
        except TimeoutError as exc:
            raise LinkError("timeout", f"no connection to {where} within {self._op:g} s") from exc
        except ssl.SSLError as exc:
            raise LinkError("tls", f"TLS with {where} failed: {exc}") from exc
        except OSError as exc:
            raise LinkError("network", f"cannot connect to {where}: {exc}") from exc
        client = self._client
        client.prepare(sock)
        answer: tuple[bool, ReasonCode, Properties | None] | None = None
        try:
            client.reconnect()
        except (OSError, paho.WebsocketConnectionError) as exc:
            sock.close()
            raise LinkError("network", f"cannot connect to {where}: {exc}") from exc
        try:
            async with asyncio.timeout(self._op):
                answer = await conn.wait(conn.connack)
            self._connected(conn, *answer)
        except TimeoutError as exc:
            self._drop(conn, LinkError("timeout", "no CONNACK"))
            raise LinkError("timeout", f"no CONNACK from {where} within {self._op:g} s") from exc
        except LinkError as exc:
            self._drop(conn, exc)
            if answer is None:
                raise self._closed_before_connack(exc, where) from None
            raise
        except BaseException:
            self._drop(conn, LinkError("network", "cancelled"))
            raise
        return conn

    def _closed_before_connack(self, exc: LinkError, where: str) -> LinkError:
        first = self._client.unread_packet_start()
        if (first is not None and first >> 4 != 2) or "protocol" in str(exc).lower():
            # Its answer to CONNECT was not a CONNACK (packet type 2): an HTTP server, say.
            seen = f" (its answer began with {bytes([first])!r})" if first is not None else ""
            return LinkError("protocol", f"the broker address {where} does not speak MQTT{seen}")
        return LinkError(exc.reason, f"{where} closed the connection before CONNACK: {exc}")

    def _connected(
        self, conn: _Connection, present: bool, reason: ReasonCode, props: Properties | None
    ) -> None:
        """Check the CONNACK; take the broker's limits; say so if our session was lost."""
        where = f"{self._client.host}:{self._client.port}"
        if reason.is_failure:
            self._drop(conn, LinkError("refused", "refused"))
            text = f"{reason} (code 0x{reason.value:02X})"
            if reason.value in _NOT_AUTHORIZED:
                raise LinkError("not_authorized", text)
            if self.v5 and reason.value == _WRONG_PROTOCOL:
                raise LinkError("protocol", _protocol_hint(where))
            raise LinkError("refused", f"connection refused: {text}")
        maximum_qos = getattr(props, "MaximumQoS", 1)
        if maximum_qos < 1:
            self._drop(conn, LinkError("refused", "refused"))
            raise LinkError("refused", "the broker allows QoS 0 only; commands need QoS 1")
        if not present:
            # MQTT 5 with a Session Expiry of 0 keeps no session across a disconnect: none is
            # expected back, so its absence is no loss.
            kept = not self.v5 or self._settings.session_expiry > 0
            if self._had_session and kept:
                self._metrics.mqtt_sessions_lost.inc()
                log.warning(
                    "the broker dropped our session (%s): commands queued while we were away "
                    "are lost",
                    self.client_id,
                )
            elif kept:
                log.info("the broker had no session for %s: starting a new one", self.client_id)
        self._had_session = True
        # MQTT 5: the broker's Receive Maximum (65,535 when absent) bounds our unacknowledged
        # publishes. The ones paho resends after a reconnect were within the last window.
        self._window = getattr(props, "ReceiveMaximum", 65535) if self.v5 else _WINDOW_311
        self._release()

    async def _set_up(self, conn: _Connection) -> None:
        """Subscribe (commands, watchers, broker facts) in one SUBSCRIBE, then publish online."""
        commands = self._channels.subscriptions
        filters = [(f, 1) for f in commands] + [(f, 1) for f, _ in self._watchers]
        if self._settings.broker_stats:
            # Mosquitto counts messages it dropped (queue limits) here; other brokers may not.
            filters.append((BROKER_DROPPED, 0))
        _, mid = self._client.subscribe(filters)
        waiter: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        conn.subscribing[mid or 0] = waiter
        codes = await waiter
        self._check_granted(filters, codes, len(commands))
        await self.publish_soon(self._channels.state_topic, self._channels.online, retain=True)

    def _check_granted(self, filters: list[tuple[str, int]], codes: list[int], count: int) -> None:
        if len(codes) != len(filters):
            raise LinkError("network", f"SUBACK with {len(codes)} codes for {len(filters)}")
        granted = codes[:count]
        if any(code > 2 for code in granted):
            raise LinkError("refused", f"subscription refused by the broker: {granted}")
        if any(code == 0 for code in granted):
            log.warning("broker granted QoS 0 only; commands may be lost: %s", granted)
        for (topic_filter, _), code in zip(filters[count:], codes[count:], strict=True):
            # A refused $SYS subscription (ACL) only costs the metric: not an error.
            if code > 2 and topic_filter != BROKER_DROPPED:
                log.warning("subscription to %s refused by the broker (0x%02X)", topic_filter, code)

    def _up(self, conn: _Connection) -> None:
        conn.up = True
        self._last_failure = None
        self.ready = True
        self._connected_gauge.set(1)
        log.info("MQTT connected as %s, subscribed", self.client_id)

    def _down(self) -> None:
        self._conn = None
        self.ready = False
        self._connected_gauge.set(0)

    def _drop(self, conn: _Connection, error: LinkError) -> None:
        """End `conn` with `error`, closing its socket without DISCONNECT (so the will goes)."""
        conn.fail(error)
        if self._driver is not None and self._conn is conn:
            self._driver.abort()

    def _disconnect(self, conn: _Connection) -> None:
        if conn.error is None and self._driver is not None:
            self._client.disconnect()
            self._driver.flush()
        conn.fail(LinkError("network", "disconnected"))

    def _backoff(self, attempt: int) -> float:
        """The wait before reconnect `attempt` (0 after a connection that got up): the
        policy the application gives (`bridge.core.retry.reconnect`), else mqtt.reconnect_min."""
        if self._reconnect_wait is None:
            return self._settings.reconnect_min
        return self._reconnect_wait(attempt)

    @property
    def _op(self) -> float:
        return self._settings.op_timeout

    def _tls_context(self) -> ssl.SSLContext:
        # Hostname verification stays on: check_hostname and CERT_REQUIRED are the defaults.
        context = ssl.create_default_context(cafile=self._settings.ca_file)
        if self._settings.cert_file:
            context.load_cert_chain(self._settings.cert_file, self._settings.key_file)
        return context

    def _watchdog(self) -> None:
        """Once a second: drop a broker that leaves our publishes unacknowledged too long."""
        conn = self._conn
        now = time.monotonic()
        if conn is None or not conn.up or self._acks != self._acks_seen or not self._pending:
            self._acks_seen, self._progress_at = self._acks, now
            return
        if now - self._progress_at > self._op:
            waiting = f"{len(self._pending)} publishes waiting"
            self._drop(conn, LinkError("timeout", f"no PUBACK for {self._op:g} s, {waiting}"))

    def stop_intake(self) -> None:
        """Stop handing messages to the handler; results can still be published."""
        self._stopping = True

    async def close(self) -> None:
        """Publish offline; the caller then cancels `run()` to disconnect.

        The subscriptions stay: they belong to the persistent session, which keeps collecting
        commands for the bridge while it is away.
        """
        self._stopping = True
        conn = self._conn
        if conn is None or not conn.up:
            return
        try:
            async with asyncio.timeout(2):
                await conn.wait(
                    self.publish_soon(
                        self._channels.state_topic, self._channels.offline, retain=True
                    )
                )
        except TimeoutError:
            log.warning("could not publish offline state: no PUBACK within 2 s")
        except (LinkError, BridgeError) as exc:
            log.warning("could not publish offline state: %s", exc)

    # -- paho callbacks (run inside loop_read / loop_misc, on the loop) ------------------------

    def _connack(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        conn = self._conn
        if conn is not None and not conn.connack.done():
            conn.connack.set_result((flags.session_present, reason, props))

    def _disconnected(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        conn = self._conn
        if conn is None:
            return
        if flags.is_disconnect_packet_from_server:
            text = f"the broker disconnected us ({reason})"
        elif reason.value == 0x8D:
            text = f"nothing from the broker within the keepalive ({self._client.keepalive} s)"
        else:
            text = f"connection lost ({reason})"
        kind = "timeout" if reason.value == 0x8D else "network"
        conn.fail(LinkError(kind, text))

    def _suback(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        conn = self._conn
        waiter = conn.subscribing.pop(mid, None) if conn is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result([code.value for code in codes])

    def _puback(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._acks += 1
        waiter = self._pending.pop(mid, None)
        topic = self._pending_topics.pop(mid, "?")
        if self._held:
            self._release()
        if waiter is None or waiter.done():
            return
        if reason.is_failure:
            self._metrics.child(self._metrics.mqtt_publish_refused, _label(reason)).inc()
            message = f"the broker refused the publish on {topic}: {reason} (0x{reason.value:02X})"
            log.warning("%s", message)
            waiter.set_exception(PublishRefused(message, detail={"reason_code": reason.value}))
        else:
            waiter.set_result(None)

    def _received(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        conn = self._conn
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""  # a broker bug: acknowledged and dropped below, it cannot be answered
        driver = self._driver
        if conn is None or conn.error is not None or (driver is not None and driver.closing):
            return  # the connection is going: the broker redelivers it
        if not topic or self._watched(conn, topic, message):
            if message.qos:
                self._client.ack(message.mid, message.qos)
            return
        inbox = conn.inbox
        inbound = Inbound(topic, message, conn.generation, self._max_payload)
        if not inbound.qos and len(inbox) >= self._inbox_limit and self._shed is not None:
            self._shed(inbound)
            return
        inbox.append(inbound)
        # Pause only once the handler is being fed: during the set-up the SUBACK and PUBACK it
        # waits for may sit behind the commands a resumed session delivers first.
        full = len(inbox) >= self._receive_maximum
        if full and conn.up and not self._pending and driver is not None:
            driver.pause_reading()
        wakeup = conn.wakeup
        if wakeup is not None:
            conn.wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    def _watched(self, conn: _Connection, topic: str, message: paho.MQTTMessage) -> bool:
        """Handle non-command messages (broker facts, watchers); True if it was one."""
        if topic.startswith("$SYS/"):
            self._broker_fact(topic, bytes(message.payload))
            return True
        for topic_filter, watcher in self._watchers:
            if topic == topic_filter or paho.topic_matches_sub(topic_filter, topic):
                if conn.early is not None:
                    conn.early.append((watcher, topic, bytes(message.payload)))
                else:
                    watcher(topic, bytes(message.payload))
                return True
        return False

    def _broker_fact(self, topic: str, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        try:
            self._metrics.broker_dropped.set(float(text))
        except ValueError:
            log.debug("unreadable %s: %r", topic, text[:40])

    # -- messages ------------------------------------------------------------------------------

    async def _read(self, conn: _Connection, handler: Handler) -> None:
        """Hand messages to `handler` in order, one at a time; cancelled when `conn` is lost."""
        inbox, driver = conn.inbox, self._driver
        assert driver is not None
        low = self._receive_maximum // 2
        while True:
            while inbox:
                inbound = inbox.popleft()
                if len(inbox) <= low:
                    driver.resume_reading()
                if self._stopping:
                    continue  # intake stopped for shutdown: redelivered next time
                await handler(inbound)
            conn.wakeup = asyncio.get_running_loop().create_future()
            await conn.wakeup

    def _reader_done(self, conn: _Connection) -> Callable[[asyncio.Task[None]], None]:
        """If the reader fails (a bug in the handler), drop the connection so `run()` sees it."""

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                self._drop(conn, LinkError("network", f"message handler failed: {exc!r}"))

        return done

    def ack(self, inbound: Inbound) -> None:
        """PUBACK `inbound` if it came on the live connection; otherwise the broker redelivers."""
        conn = self._conn
        if inbound.qos and conn is not None and conn.up and inbound.generation == conn.generation:
            self._client.ack(inbound.mid, inbound.qos)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
        expiry: int | None = None,
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, across reconnects."""
        await self.publish_soon(
            topic, payload, retain=retain, correlation=correlation, expiry=expiry
        )

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
        expiry: int | None = None,
    ) -> asyncio.Future[None]:
        """Hand a QoS 1 publish to paho now (written in this loop iteration, after those of
        earlier calls, when the link is up); the future completes with its PUBACK. `expiry`
        (MQTT 5 Message Expiry Interval, seconds) is dropped under 3.1.1, as is `correlation`.

        Raises ValueError for a topic that is not publishable and Overloaded when `buffer`
        publishes already wait; the future fails with PublishRefused when the broker refuses.
        """
        if not is_publishable(topic):
            raise ValueError(f"refusing to publish to {topic!r}")
        if len(self._pending) + len(self._held) >= self._buffer:
            self._metrics.outbound_dropped.inc()
            raise Overloaded(
                f"{self._buffer} messages already wait for the broker; message to {topic} not sent"
            )
        properties = None
        if self.v5 and (correlation is not None or expiry is not None):
            properties = _properties(PacketTypes.PUBLISH)
            if correlation is not None:
                properties.CorrelationData = correlation
            if expiry is not None:
                properties.MessageExpiryInterval = expiry
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._held or len(self._pending) >= self._window:
            self._held.append((topic, payload, retain, properties, waiter))
        else:
            self._hand_over(topic, payload, retain, properties, waiter)
        return waiter

    def publish_once(self, topic: str, payload: bytes, *, correlation: bytes | None = None) -> bool:
        """Publish at QoS 0, now, if the link is up; False if it is not (nothing is kept).

        For answers to QoS 0 commands the bridge sheds: at most once, like the command, and
        with no PUBACK to wait for, no window to queue in and nothing kept across reconnects.
        """
        conn = self._conn
        if conn is None or not conn.up or not is_publishable(topic):
            return False
        properties = None
        if self.v5 and correlation is not None:
            properties = _properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._client.publish(topic, payload, 0, False, properties)
        return True

    def _hand_over(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        properties: Properties | None,
        waiter: asyncio.Future[None],
    ) -> None:
        """To paho: written at once on a live connection, kept and resent after a reconnect."""
        info = self._client.publish(topic, payload, 1, retain, properties)
        self._pending[info.mid] = waiter
        self._pending_topics[info.mid] = topic
        if self._driver is not None:
            self._driver.resume_reading()  # its PUBACK must be read

    def _release(self) -> None:
        """Hand held publishes over as far as the window allows, in order."""
        held, pending = self._held, self._pending
        while held and len(pending) < self._window:
            topic, payload, retain, properties, waiter = held.popleft()
            if not waiter.done():  # its publisher may have given up meanwhile
                self._hand_over(topic, payload, retain, properties, waiter)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def _protocol_hint(where: str) -> str:
    return f"broker speaks MQTT 3.1.1 only: set mqtt.protocol to 3.1.1 ({where})"


def _label(reason: ReasonCode) -> str:
    """A metric label from a reason code's name ("Not authorized" -> "not_authorized")."""
    return str(reason).lower().replace(" ", "_")
