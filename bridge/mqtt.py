"""The one module that talks to the MQTT broker: our own lean asyncio MQTT client.

Three layers: `bridge.mqttwire` (packets as bytes, no I/O), `bridge.mqttconn` (one connection:
flow control, keepalive, the futures waiting on it) and here the session policy above them.

The bridge speaks MQTT 5 / 3.1.1 itself rather than through aiomqtt/paho: those cost 35-40 % of
its CPU per command (a send() per packet, three recv() per packet, a properties object, a lock
and several futures and timers per publish). Here, every packet that one read completes is
handled in one pass, the packets written during one event-loop iteration go out in one write,
and a publish costs one future: no task, timer or lock per message.

What it guarantees to the rest of the bridge:
- A persistent session under a fixed client id (clean start off, session expiry configurable),
  so commands published while the bridge is down are delivered when it returns.
- Manual acknowledgement: an inbound QoS 1 command is PUBACKed only when `ack()` is called, which
  the dispatcher does after the command's result was published and acknowledged. A PUBACK is
  only ever sent on the connection the message arrived on: packet ids restart per connection, and
  the broker redelivers whatever was not acknowledged before a reconnect.
- Retained `bridge/state` online on every (re)connect, offline as the last will and on shutdown.
- Reconnect with jittered exponential backoff, resubscribing each time; TCP_NODELAY on the socket
  (with Nagle on, every command waits ~40-88 ms on delayed ACKs).
- `publish()` waits for the broker's PUBACK and rides out a reconnect: while the link is down,
  publishes wait (bounded by `buffer` waiters; beyond that they are refused and counted). At
  most the broker's Receive Maximum of them are unacknowledged at once; the rest wait their
  turn in order.
- A lost connection is noticed at once, and ends every wait on it: publishes waiting for their
  PUBACK move on to wait for the next connection, the set-up stops, and the reader's wait for
  the dispatcher to take a message (a full in-flight window) is cancelled. Without that, a window
  full of commands whose results wait for the link keeps the reader from reconnecting. A silent
  broker is noticed too: no packet for 1.5 keepalives, or publishes waiting with no PUBACK for
  `op_timeout`, and the connection is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge import models, mqttwire
from bridge.config import MqttSettings, broker_address, client_id_or_default
from bridge.errors import BridgeError, Overloaded
from bridge.metrics import Metrics
from bridge.mqttconn import Connection, Inbound, LinkError
from bridge.topics import Topics, is_publishable

__all__ = ["BROKER_DROPPED", "Inbound", "LinkDown", "MqttLink"]

log = logging.getLogger(__name__)

BROKER_DROPPED: Final = "$SYS/broker/publish/messages/dropped"
# CONNACK codes that mean "your credentials": v5 0x86/0x87, 3.1.1 4/5.
_NOT_AUTHORIZED: Final = {True: frozenset({0x86, 0x87}), False: frozenset({4, 5})}


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
        self._conn: Connection | None = None
        self._generation = 0
        self._up = asyncio.Event()
        self._was_up = False
        self._stopping = False
        self._waiters = asyncio.Semaphore(buffer)
        self._on_connect: list[ConnectHook] = []
        # (filter, has wildcards, watcher)
        self._watchers: list[tuple[str, bool, Watcher]] = []
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
        wild = "+" in topic_filter or "#" in topic_filter
        self._watchers.append((topic_filter, wild, watcher))

    # -- connection lifecycle --------------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        """Connect, subscribe and feed messages to `handler`, reconnecting until `stop()`.

        `handler` is awaited for each command message before the next is handed over: it
        applies back-pressure by not returning while the bridge is full. If the connection is
        lost meanwhile, that wait is cancelled (so `handler` must be safe to cancel while it
        waits) and the message is left to the broker to redeliver.
        """
        attempt = 0
        while not self._stopping:
            self._was_up = False
            try:
                await self._session(handler)
            except LinkError as exc:
                self._metrics.mqtt_connect_failures.labels(exc.reason).inc()
                if exc.reason == "not_authorized":
                    log.warning(
                        "MQTT broker refused our credentials or client id (user %r): %s; "
                        "check mqtt.username/password; retrying with backoff",
                        broker_address(self._settings).username,
                        exc,
                    )
                else:
                    log.warning("MQTT link down: %s", exc)
            finally:
                self._went_down()
            if self._stopping:
                break
            if self._was_up:
                attempt = 0
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            self._metrics.mqtt_reconnects.inc()

    async def _session(self, handler: Handler) -> None:
        conn = await self._connect()
        self._conn = conn
        try:
            await self._set_up(conn)
            self._up.set()
            self._was_up = True
            self._metrics.mqtt_connected.set(1)
            log.info("MQTT connected as %s, subscribed", self.client_id)
            for hook in self._on_connect:
                await hook()
            if conn.error is None:
                conn.reader = asyncio.create_task(self._read(conn, handler), name="mqtt-reader")
                conn.reader.add_done_callback(_reader_done(conn))
            await conn.closed
        except asyncio.CancelledError:
            conn.close()  # shutting down: a clean DISCONNECT, so no will
            raise
        finally:
            conn.abort(LinkError("network", "session ended"))
        reader = conn.reader
        if reader is not None and reader.done() and not reader.cancelled():
            failure = reader.exception()
            if failure is not None:
                raise failure
        assert conn.error is not None
        raise conn.error

    async def _connect(self) -> Connection:
        settings, address = self._settings, broker_address(self._settings)
        self._generation += 1
        conn = Connection(self._generation, self.v5, self._lost)
        tls = self._tls_context() if address.tls else None
        where = f"{address.host}:{address.port}"
        try:
            async with asyncio.timeout(self._op):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn,
                    address.host,
                    address.port,
                    ssl=tls,
                    server_hostname=address.host if tls else None,
                )
                conn.send(self._connect_packet(address.username, address.password))
                connack = await conn.connack
        except TimeoutError as exc:
            conn.abort(LinkError("timeout", "connect timed out"))
            raise LinkError("timeout", f"no CONNACK from {where} within {self._op:g} s") from exc
        except OSError as exc:
            conn.abort(LinkError("network", str(exc)))
            raise LinkError("network", f"cannot connect to {where}: {exc}") from exc
        except asyncio.CancelledError:
            conn.abort(LinkError("network", "cancelled"))
            raise
        if connack.reason:
            conn.abort(LinkError("refused", "refused"))
            name = mqttwire.reason_name(connack.reason, v5=self.v5)
            more = f": {connack.reason_string}" if connack.reason_string else ""
            text = f"{name} (code {connack.reason}){more}"
            if connack.reason in _NOT_AUTHORIZED[self.v5]:
                raise LinkError("not_authorized", text)
            raise LinkError("refused", f"connection refused: {text}")
        if connack.maximum_qos < 1:
            conn.abort(LinkError("refused", "refused"))
            raise LinkError("refused", "the broker allows QoS 0 only; commands need QoS 1")
        conn.accepted(connack, settings.keepalive, self._op)
        return conn

    def _connect_packet(self, username: str | None, password: str | None) -> bytes:
        will = mqttwire.Will(self._topics.bridge_state, models.OFFLINE, qos=1, retain=True)
        return mqttwire.connect(
            self.client_id,
            v5=self.v5,
            clean_start=False,
            keepalive=self._settings.keepalive,
            will=will,
            username=username,
            password=password,
            session_expiry=self._settings.session_expiry,
            receive_maximum=self._receive_maximum,
        )

    async def _set_up(self, conn: Connection) -> None:
        """Subscribe (commands, watchers, broker facts) in one SUBSCRIBE, then publish online."""
        commands = self._topics.subscriptions(self._settings.shared_group)
        filters = [(f, 1) for f in commands] + [(f, 1) for f, _, _ in self._watchers]
        if self._settings.broker_stats:
            # Mosquitto counts messages it dropped (queue limits) here; other brokers may not.
            filters.append((BROKER_DROPPED, 0))
        try:
            async with asyncio.timeout(self._op):
                codes = await conn.subscribe(filters)
                self._check_granted(filters, codes, len(commands))
                online = conn.publish(self._topics.bridge_state, models.ONLINE, True, None)
                await online
        except TimeoutError as exc:
            what = f"no SUBACK or PUBACK within {self._op:g} s"
            raise LinkError("timeout", f"subscribing timed out: {what}") from exc

    def _check_granted(self, filters: list[tuple[str, int]], codes: list[int], count: int) -> None:
        if len(codes) != len(filters):
            raise LinkError("network", f"SUBACK with {len(codes)} codes for {len(filters)}")
        granted = codes[:count]
        if any(code > 2 for code in granted):
            names = [mqttwire.reason_name(c, mqttwire.SUBACK, v5=self.v5) for c in granted]
            raise LinkError("refused", f"subscription refused by the broker: {names}")
        if any(code == 0 for code in granted):
            log.warning("broker granted QoS 0 only; commands may be lost: %s", granted)
        self.ready = True
        for (topic_filter, _), code in zip(filters[count:], codes[count:], strict=True):
            # A refused $SYS subscription (ACL) only costs the metric: not an error.
            if code > 2 and topic_filter != BROKER_DROPPED:
                log.warning("subscription to %s refused by the broker (0x%02X)", topic_filter, code)

    def _lost(self, conn: Connection) -> None:
        if conn is self._conn:
            self._up.clear()
            self.ready = False
            self._metrics.mqtt_connected.set(0)

    def _went_down(self) -> None:
        self._conn = None
        self._up.clear()
        self.ready = False
        self._metrics.mqtt_connected.set(0)

    def _backoff(self, attempt: int) -> float:
        low, high = self._settings.reconnect_min, self._settings.reconnect_max
        ceiling = min(high, low * 2**attempt)
        return random.uniform(low, ceiling)  # noqa: S311 - jitter, not cryptography

    @property
    def _op(self) -> float:
        return self._settings.op_timeout

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
        conn = self._conn
        if conn is None or conn.error is not None:
            return
        try:
            async with asyncio.timeout(2):
                await conn.publish(self._topics.bridge_state, models.OFFLINE, True, None)
        except TimeoutError:
            log.warning("could not publish offline state: no PUBACK within 2 s")
        except LinkError as exc:
            log.warning("could not publish offline state: %s", exc)

    # -- messages --------------------------------------------------------------------------

    async def _read(self, conn: Connection, handler: Handler) -> None:
        """Hand messages to `handler` in order, one at a time; cancelled when `conn` is lost."""
        inbox = conn.inbox
        while True:
            while inbox:
                inbound = inbox.popleft()
                if self._watched(conn, inbound) or self._stopping:
                    # Intake stopped for shutdown: left unacknowledged, redelivered next time.
                    continue
                await handler(inbound)
            await conn.next_batch()

    def _watched(self, conn: Connection, inbound: Inbound) -> bool:
        """Handle non-command messages (broker facts, watchers); True if it was one."""
        topic = inbound.topic
        if topic.startswith("$SYS/"):
            self._broker_fact(topic, inbound.payload)
            return True
        for topic_filter, wild, watcher in self._watchers:
            if topic == topic_filter or (wild and mqttwire.matches(topic_filter, topic)):
                watcher(topic, inbound.payload)
                if inbound.qos:
                    # Not a command: nothing to answer, so acknowledged at once.
                    conn.send(mqttwire.puback(inbound.mid))
                return True
        return False

    def _broker_fact(self, topic: str, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        try:
            self._metrics.broker_dropped.set(float(text))
        except ValueError:
            log.debug("unreadable %s: %r", topic, text[:40])

    def ack(self, inbound: Inbound) -> None:
        """PUBACK `inbound` if it came on the live connection; otherwise the broker redelivers."""
        conn = self._conn
        if inbound.qos and conn is not None and inbound.generation == conn.generation:
            conn.send(mqttwire.puback(inbound.mid))

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
        await self.publish_soon(
            topic, payload, retain=retain, correlation=correlation, deadline=deadline
        )

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
        deadline: float = 30.0,
    ) -> asyncio.Future[None]:
        """`publish()` started now: on a live link the packet is written in this loop iteration,
        after those of earlier calls; the future completes with the PUBACK. No task is created
        unless the link is down or drops before the PUBACK (then `publish()`'s waiting applies).
        """
        if not is_publishable(topic):
            raise ValueError(f"refusing to publish to {topic!r}")
        if not self.v5:
            correlation = None
        conn = self._conn
        if conn is not None and self._up.is_set():
            try:
                waiter = conn.publish(topic, payload, retain, correlation)
            except LinkError:
                pass  # the link is dropping: wait for the next one
            except Overloaded:
                self._metrics.outbound_dropped.inc()
                raise
            else:
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                later = (topic, payload, retain, correlation, deadline)
                waiter.add_done_callback(lambda w: self._acked(w, done, later))
                return done
        return asyncio.ensure_future(
            self._publish_later(topic, payload, retain, correlation, deadline)
        )

    def _acked(
        self,
        waiter: asyncio.Future[int],
        done: asyncio.Future[None],
        later: tuple[str, bytes, bool, bytes | None, float],
    ) -> None:
        """PUBACK (or not) for a `publish_soon()`: a lost link hands the message to the waiting
        path, anything else ends `done` as the publish ended."""
        exc = None if waiter.cancelled() else waiter.exception()  # retrieved either way
        if done.cancelled():
            return
        if isinstance(exc, LinkError):
            retry = asyncio.ensure_future(self._publish_later(*later))
            retry.add_done_callback(lambda r: _copy_outcome(r, done))
        elif isinstance(exc, Overloaded):
            self._metrics.outbound_dropped.inc()
            done.set_exception(exc)
        elif exc is not None:
            done.set_exception(exc)
        elif waiter.cancelled():
            done.cancel()
        else:
            done.set_result(None)

    async def _publish_later(
        self, topic: str, payload: bytes, retain: bool, correlation: bytes | None, deadline: float
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
                conn = self._conn
                if conn is None or conn.error is not None:
                    await asyncio.sleep(0.05)  # between connections: _up is about to clear
                    continue
                try:
                    await conn.publish(topic, payload, retain, correlation)
                except LinkError:
                    continue  # lost again: _up is clear, so the next wait really waits
                except Overloaded:
                    self._metrics.outbound_dropped.inc()
                    raise
                else:
                    return
        self._metrics.outbound_dropped.inc()
        raise LinkDown(f"broker unreachable for {deadline:.0f} s; message to {topic} not sent")


def _copy_outcome(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        if not source.cancelled():
            source.exception()  # retrieved: the caller gave up on it
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(None)


def _reader_done(conn: Connection) -> Callable[[asyncio.Task[None]], None]:
    """If the reader fails (a bug in the handler), drop the connection so `run()` sees it."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            conn.abort(LinkError("network", f"message handler failed: {task.exception()!r}"))

    return done
