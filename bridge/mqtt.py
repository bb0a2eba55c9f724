"""The one module that talks to the MQTT broker (aiomqtt 2.x over paho-mqtt 2.x).

What it guarantees to the rest of the bridge:
- A persistent session under a fixed client id (clean start off, session expiry configurable),
  so commands published while the bridge is down are delivered when it returns.
- Manual acknowledgement: an inbound QoS 1 command is PUBACKed only when `ack()` is called, which
  the dispatcher does after the command's result was published and acknowledged. aiomqtt does not
  expose paho's `manual_ack`, so it is switched on here, on the wrapped paho client. A PUBACK is
  only ever sent on the connection the message arrived on: message ids restart per connection, and
  the broker redelivers whatever was not acknowledged before a reconnect.
- Retained `bridge/state` online on every (re)connect, offline as the last will and on shutdown.
- Reconnect with jittered exponential backoff, resubscribing each time; TCP_NODELAY on the socket
  (with Nagle on, every command waits ~40-88 ms on delayed ACKs).
- `publish()` waits for the broker's PUBACK and rides out a reconnect: while the link is down,
  publishes wait (bounded by `buffer` waiters; beyond that they are refused and counted).
- A lost connection is noticed at once, even while the reader waits for the dispatcher to take
  a message (a full in-flight window), a publish waits for its PUBACK or the set-up for a
  SUBACK (aiomqtt itself waits out its timeout). Without that, a window full of commands whose
  results wait for the link keeps the reader from reconnecting (a deadlock until the publish
  deadline), and a PUBACK lost with the connection holds its publish for the whole `op_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import models
from bridge.config import MqttSettings, broker_address, client_id_or_default
from bridge.errors import BridgeError, Overloaded
from bridge.metrics import Metrics
from bridge.topics import Topics, is_publishable

log = logging.getLogger(__name__)

NODELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
BROKER_DROPPED: Final = "$SYS/broker/publish/messages/dropped"
T = TypeVar("T")


class Inbound:
    """One received command message, with what is needed to answer and acknowledge it."""

    __slots__ = (
        "correlation",
        "expiry",
        "generation",
        "mid",
        "payload",
        "qos",
        "received",
        "response_topic",
        "topic",
    )

    def __init__(self, message: aiomqtt.Message, generation: int) -> None:
        self.topic = message.topic.value
        payload = message.payload
        self.payload = payload if isinstance(payload, bytes) else str(payload or "").encode()
        self.mid = message.mid
        self.qos = message.qos
        self.generation = generation
        self.received = time.perf_counter()
        props = message.properties
        self.response_topic: str | None = getattr(props, "ResponseTopic", None)
        self.correlation: bytes | None = getattr(props, "CorrelationData", None)
        # Remaining lifetime the broker reports (MQTT v5 Message Expiry Interval), seconds.
        self.expiry: int | None = getattr(props, "MessageExpiryInterval", None)


Handler = Callable[[Inbound], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]
Watcher = Callable[[str, bytes], None]


class LinkDown(BridgeError):
    """The broker could not be reached in time to publish."""

    code = "upstream_unavailable"


class MqttLink:
    """Owns the broker connection. Constructing it does no I/O; `run()` does."""

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        metrics: Metrics,
        *,
        receive_maximum: int = 100,
        buffer: int = 10_000,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._metrics = metrics
        self._receive_maximum = max(1, min(receive_maximum, 65535))
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._up = asyncio.Event()
        self._stopping = False
        self._waiters = asyncio.Semaphore(buffer)
        self._on_connect: list[ConnectHook] = []
        self._has_room: Callable[[], bool] = bool
        self._watchers: list[tuple[aiomqtt.Topic | aiomqtt.Wildcard, str, Watcher]] = []
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
        self._watchers.append((aiomqtt.Wildcard(topic_filter), topic_filter, watcher))

    # -- connection lifecycle --------------------------------------------------------------

    async def run(self, handler: Handler, *, has_room: Callable[[], bool] = bool) -> None:
        """Connect, subscribe and feed messages to `handler`, reconnecting until `stop()`.

        `handler` is awaited for each message before the next is read: it applies back-pressure
        by not returning while the bridge is full. `has_room()` says it will return at once;
        only when it will not is the wait raced against the connection (a task per message).
        """
        self._has_room = has_room
        attempt = 0
        while not self._stopping:
            try:
                await self._session(handler)
                attempt = 0
            except aiomqtt.MqttError as exc:
                reason = _reason(exc)
                self._metrics.mqtt_connect_failures.labels(reason).inc()
                if reason == "not_authorized":
                    log.warning(
                        "MQTT broker refused our credentials or client id (user %r): %s; "
                        "check mqtt.username/password; retrying with backoff",
                        broker_address(self._settings).username,
                        _describe(exc),
                    )
                else:
                    log.warning("MQTT link down: %s", _describe(exc))
            finally:
                self._went_down()
            if self._stopping:
                break
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            self._metrics.mqtt_reconnects.inc()

    async def _session(self, handler: Handler) -> None:
        client = self._make_client()
        async with client:
            self._generation += 1
            generation = self._generation
            self._client = client
            await _until_lost(client, self._subscribe(client))
            online = client.publish(
                self._topics.bridge_state, models.ONLINE, qos=1, retain=True, timeout=self._op
            )
            await _until_lost(client, online)
            self._up.set()
            self._metrics.mqtt_connected.set(1)
            log.info("MQTT connected as %s, subscribed", self.client_id)
            for hook in self._on_connect:
                await hook()
            async for message in client.messages:
                if self._watched(message):
                    # Not a command: nothing to answer, so acknowledged at once.
                    if message.qos:
                        client._client.ack(message.mid, message.qos)  # noqa: SLF001
                    continue
                if self._stopping:
                    # Intake stopped for shutdown: left unacknowledged, redelivered next time.
                    continue
                # A message the handler had not taken when the link dropped is redelivered.
                inbound = Inbound(message, generation)
                if self._has_room():
                    await handler(inbound)
                else:
                    await _until_lost(client, handler(inbound))

    def _watched(self, message: aiomqtt.Message) -> bool:
        """Handle non-command messages (broker facts, watchers); True if it was one."""
        topic = message.topic
        if topic.value.startswith("$SYS/"):
            self._broker_fact(message)
            return True
        for wildcard, _, watcher in self._watchers:
            if topic.matches(wildcard):
                payload = message.payload if isinstance(message.payload, bytes) else b""
                watcher(topic.value, payload)
                return True
        return False

    def _broker_fact(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)
        try:
            self._metrics.broker_dropped.set(float(text))
        except ValueError:
            log.debug("unreadable %s: %r", message.topic.value, text[:40])

    def _went_down(self) -> None:
        self._up.clear()
        self._client = None
        self.ready = False
        self._metrics.mqtt_connected.set(0)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        filters = self._topics.subscriptions(self._settings.shared_group)
        granted = await client.subscribe([(f, 1) for f in filters], timeout=self._op)
        codes = [getattr(g, "value", g) for g in granted]
        if any(not isinstance(c, int) or c > 2 for c in codes):
            raise aiomqtt.MqttError(f"subscription refused by the broker: {codes}")
        if any(c == 0 for c in codes):
            log.warning("broker granted QoS 0 only; commands may be lost: %s", codes)
        self.ready = True
        for _, topic_filter, _ in self._watchers:
            await client.subscribe(topic_filter, qos=1, timeout=self._op)
        if self._settings.broker_stats:
            # Mosquitto counts messages it dropped (queue limits) here; other brokers may not.
            # A refusal (ACL) only costs the metric, so it is not an error.
            await client.subscribe(BROKER_DROPPED, qos=0, timeout=self._op)

    def _backoff(self, attempt: int) -> float:
        low, high = self._settings.reconnect_min, self._settings.reconnect_max
        ceiling = min(high, low * 2**attempt)
        return random.uniform(low, ceiling)  # noqa: S311 - jitter, not cryptography

    @property
    def _op(self) -> float:
        return self._settings.op_timeout

    def _make_client(self) -> aiomqtt.Client:
        address = broker_address(self._settings)
        will = aiomqtt.Will(self._topics.bridge_state, models.OFFLINE, qos=1, retain=True)
        kwargs: dict[str, object] = {}
        if self.v5:
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._settings.session_expiry
            props.ReceiveMaximum = self._receive_maximum
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props)
        else:
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V311, clean_session=False)
        client = aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=self.client_id,
            will=will,
            keepalive=self._settings.keepalive,
            timeout=self._op,
            tls_context=self._tls_context() if address.tls else None,
            socket_options=NODELAY,
            logger=log,
            **kwargs,  # type: ignore[arg-type]
        )
        # See the module docstring: acknowledge only once the result is out.
        client._client.manual_ack_set(True)  # noqa: SLF001
        # aiomqtt warns past 10 outstanding publishes; with a window of commands in flight, each
        # publishing a result, an event and state, many more are normal.
        client.pending_calls_threshold = 8 * self._receive_maximum
        return client

    def _tls_context(self) -> ssl.SSLContext:
        # Hostname verification stays on: check_hostname and CERT_REQUIRED are the defaults.
        context = ssl.create_default_context(cafile=self._settings.ca_file)
        if self._settings.cert_file:
            context.load_cert_chain(self._settings.cert_file, self._settings.key_file)
        return context

    def stop_intake(self) -> None:
        """Stop handing messages to the handler; results can still be published."""
        self._stopping = True

    async def close(self) -> None:
        """Publish offline; the caller then cancels `run()` to disconnect.

        The subscriptions stay: they belong to the persistent session, which keeps collecting
        commands for the bridge while it is away.
        """
        self._stopping = True
        client = self._client
        if client is not None:
            try:
                await client.publish(
                    self._topics.bridge_state, models.OFFLINE, qos=1, retain=True, timeout=2
                )
            except aiomqtt.MqttError as exc:
                log.warning("could not publish offline state: %s", _describe(exc))

    # -- messages --------------------------------------------------------------------------

    def ack(self, inbound: Inbound) -> None:
        """PUBACK `inbound` if it came on the live connection; otherwise the broker redelivers."""
        client = self._client
        if inbound.qos == 0 or client is None or inbound.generation != self._generation:
            return
        client._client.ack(inbound.mid, inbound.qos)  # noqa: SLF001

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
        deadline: float = 30.0,
    ) -> None:
        """Publish at QoS 1 and wait for the PUBACK, across reconnects, within `deadline` s."""
        if not is_publishable(topic):
            raise ValueError(f"refusing to publish to {topic!r}")
        props = None
        if correlation is not None and self.v5:
            props = _properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        client = self._client
        if client is not None and self._up.is_set():
            try:
                await _until_lost(
                    client, client.publish(topic, payload, qos=1, retain=retain, properties=props)
                )
            except aiomqtt.MqttError:
                pass  # the link dropped mid-publish: fall through to wait for the next one
            else:
                return
        await self._publish_later(topic, payload, retain, props, deadline)

    async def _publish_later(
        self, topic: str, payload: bytes, retain: bool, props: Properties | None, deadline: float
    ) -> None:
        if self._waiters.locked():
            self._metrics.outbound_dropped.inc()
            raise Overloaded("outbound buffer full while the broker is unreachable")
        end = time.monotonic() + deadline
        async with self._waiters:
            while (left := end - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self._up.wait(), left)
                except TimeoutError:
                    break
                client = self._client
                if client is None:
                    continue
                try:
                    await _until_lost(
                        client,
                        client.publish(topic, payload, qos=1, retain=retain, properties=props),
                    )
                except aiomqtt.MqttError:
                    self._up.clear()
                    await asyncio.sleep(0.05)
                else:
                    return
        self._metrics.outbound_dropped.inc()
        raise LinkDown(f"broker unreachable for {deadline:.0f} s; message to {topic} not sent")


async def _until_lost(client: aiomqtt.Client, work: Awaitable[T]) -> T:
    """Await `work`, but give up with MqttError as soon as `client`'s connection is lost.

    `work` must be safe to cancel at its await points (dispatch's `submit` waits only for a slot).
    """
    lost = client._disconnected  # noqa: SLF001 - aiomqtt's own "connection ended" future
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await task
    raise aiomqtt.MqttError("connection to the broker lost")


def _properties(packet: int) -> Properties:
    return Properties(packet)  # type: ignore[no-untyped-call] # paho leaves it unannotated


def _reason(exc: aiomqtt.MqttError) -> str:
    if isinstance(exc, aiomqtt.MqttCodeError):
        rc = getattr(exc, "rc", None)
        name = getattr(rc, "getName", None)
        if callable(name):
            text = str(name()).lower()
            if "not authorized" in text or "bad user" in text:
                return "not_authorized"
        return "refused"
    text = str(exc).lower()
    if "timed out" in text:
        return "timeout"
    return "network"


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{exc} ({cause})" if cause else str(exc)
