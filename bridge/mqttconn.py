"""One connection to the MQTT broker: the asyncio protocol under bridge.mqtt.MqttLink.

It owns what lives and dies with a connection: the packet decoder, the outgoing buffer (every
packet written during one event-loop iteration goes out in one `write`), our publishes awaiting
PUBACK (a future each, by packet id) and those queued past the broker's Receive Maximum, the
received messages waiting for the reader, and the keepalive watchdog. When the connection ends,
every one of those waits ends with `LinkError` at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import cast

from bridge import mqttwire
from bridge.errors import Overloaded
from bridge.mqttwire import Connack, Disconnect, Pingresp, Puback, Publish, Suback

log = logging.getLogger("bridge.mqtt")


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

    def __init__(self, message: Publish, generation: int) -> None:
        self.topic = message.topic
        self.payload = message.payload
        self.mid = message.packet_id
        self.qos = message.qos
        self.generation = generation
        self.received = time.perf_counter()
        self.response_topic = message.response_topic
        self.correlation = message.correlation
        # Remaining lifetime the broker reports (MQTT v5 Message Expiry Interval), seconds.
        self.expiry = message.expiry


class LinkError(Exception):
    """Why a connection attempt or a connection ended; `reason` labels the failure metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # not_authorized, refused, timeout or network


Queued = tuple[str, bytes, bool, bytes | None, "asyncio.Future[int]"]


class Connection(asyncio.Protocol):
    """One connection to the broker and the MQTT state that lives and dies with it."""

    __slots__ = (
        "_acks",
        "_acks_seen",
        "_decoder",
        "_heard",
        "_heard_at",
        "_interval",
        "_keepalive",
        "_loop",
        "_max_packet",
        "_next_id",
        "_on_lost",
        "_op_timeout",
        "_out",
        "_pending",
        "_progress_at",
        "_queue",
        "_quota",
        "_sent",
        "_sent_at",
        "_subscribing",
        "_timer",
        "closed",
        "connack",
        "error",
        "generation",
        "inbox",
        "reader",
        "transport",
        "v5",
        "wakeup",
    )

    def __init__(self, generation: int, v5: bool, on_lost: Callable[[Connection], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self.generation = generation
        self.v5 = v5
        self._on_lost = on_lost
        self._decoder = mqttwire.Decoder(v5=v5)
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._pending: dict[int, asyncio.Future[int]] = {}  # our publishes awaiting PUBACK
        self._subscribing: dict[int, asyncio.Future[list[int]]] = {}
        self._queue: deque[Queued] = deque()  # publishes past the broker's Receive Maximum
        self._quota = 0xFFFF
        self._max_packet: int | None = None
        self._next_id = 1
        self.connack: asyncio.Future[Connack] = self._loop.create_future()
        self.connack.add_done_callback(retrieve)  # nobody awaits it once the attempt gave up
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.error: LinkError | None = None
        self.inbox: deque[Inbound] = deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive = self._op_timeout = self._interval = 0.0
        self._heard = self._sent = False
        self._heard_at = self._sent_at = self._progress_at = 0.0
        self._acks = self._acks_seen = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is not an asyncio.Transport subclass, so no isinstance.
        self.transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        cause = f": {exc}" if exc else " by the broker"
        self._fail(LinkError("network", f"connection closed{cause}"))

    def data_received(self, data: bytes) -> None:
        self._heard = True
        try:
            packets = self._decoder.feed(data)
        except mqttwire.ProtocolError as exc:
            self.abort(LinkError("network", f"protocol error from the broker: {exc}"))
            return
        woken = False
        for packet in packets:
            if isinstance(packet, Puback):
                self._acked(packet)
            elif isinstance(packet, Publish):
                if packet.qos == 2:
                    self.abort(LinkError("network", "QoS 2 message on a QoS 1 subscription"))
                    return
                self.inbox.append(Inbound(packet, self.generation))
                woken = True
            elif isinstance(packet, Pingresp):
                continue
            elif not self._control(packet):
                return
        if woken and self.wakeup is not None:
            wakeup, self.wakeup = self.wakeup, None
            if not wakeup.done():
                wakeup.set_result(None)

    def _control(self, packet: Connack | Suback | Disconnect) -> bool:
        """The rare packets; False once the connection is being dropped."""
        if isinstance(packet, Suback):
            waiter = self._subscribing.pop(packet.packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(packet.codes)
            return True
        if isinstance(packet, Connack) and not self.connack.done():
            self.connack.set_result(packet)
            return True
        if isinstance(packet, Disconnect):
            text = mqttwire.reason_name(packet.reason, mqttwire.DISCONNECT)
            more = f": {packet.reason_string}" if packet.reason_string else ""
            self.abort(LinkError("network", f"the broker disconnected us ({text}{more})"))
        else:
            self.abort(LinkError("network", "protocol error from the broker: a second CONNACK"))
        return False

    # -- sending -------------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Queue `packet`; everything queued in this loop iteration goes out in one write."""
        if self.error is not None:
            return
        out = self._out
        out.append(packet)
        if len(out) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if not out or self.transport is None:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._sent = True
        self.transport.write(data)

    def publish(
        self, topic: str, payload: bytes, retain: bool, correlation: bytes | None
    ) -> asyncio.Future[int]:
        """Publish at QoS 1; the future gets the PUBACK's reason code, or LinkError."""
        if self.error is not None:
            raise LinkError(self.error.reason, str(self.error))
        waiter: asyncio.Future[int] = self._loop.create_future()
        if len(self._pending) < self._quota and not self._queue:
            self._transmit(topic, payload, retain, correlation, waiter)
        else:
            self._queue.append((topic, payload, retain, correlation, waiter))
        return waiter

    def _transmit(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        correlation: bytes | None,
        waiter: asyncio.Future[int],
    ) -> None:
        pending = self._pending
        packet_id = self._next_id
        while packet_id in pending or packet_id in self._subscribing:
            packet_id = packet_id % 0xFFFF + 1
        self._next_id = packet_id % 0xFFFF + 1
        packet = mqttwire.publish(
            topic,
            payload,
            qos=1,
            retain=retain,
            packet_id=packet_id,
            v5=self.v5,
            correlation=correlation,
        )
        if self._max_packet is not None and len(packet) > self._max_packet:
            size = f"{len(packet)} bytes, more than the broker accepts ({self._max_packet})"
            waiter.set_exception(Overloaded(f"message to {topic} not sent: {size}"))
            return
        pending[packet_id] = waiter
        self.send(packet)

    def _acked(self, packet: Puback) -> None:
        waiter = self._pending.pop(packet.packet_id, None)
        if waiter is None:
            return  # not one we are waiting for (a duplicate): nothing to do
        self._acks += 1
        if packet.reason >= 0x80:
            name = mqttwire.reason_name(packet.reason, mqttwire.PUBACK)
            log.warning("the broker refused a publish: %s (0x%02X)", name, packet.reason)
        if not waiter.done():
            waiter.set_result(packet.reason)
        queue = self._queue
        while queue and len(self._pending) < self._quota:
            topic, payload, retain, correlation, queued = queue.popleft()
            if not queued.done():  # its publisher may have given up meanwhile
                self._transmit(topic, payload, retain, correlation, queued)

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        waiter: asyncio.Future[list[int]] = self._loop.create_future()
        packet_id = self._next_id
        self._next_id = packet_id % 0xFFFF + 1
        self._subscribing[packet_id] = waiter
        self.send(mqttwire.subscribe(packet_id, filters, v5=self.v5))
        return await waiter

    # -- lifetime ------------------------------------------------------------------------------

    def accepted(self, connack: Connack, keepalive: int, op_timeout: float) -> None:
        """The broker accepted us: take its limits and start the keepalive watchdog."""
        self._quota = connack.receive_maximum
        self._max_packet = connack.maximum_packet_size
        if connack.server_keep_alive is not None:
            keepalive = connack.server_keep_alive  # the server's value wins (v5 3.2.2.3.14)
        self._keepalive, self._op_timeout = float(keepalive), op_timeout
        self._interval = min(op_timeout, keepalive or op_timeout) / 2
        self._heard_at = self._sent_at = self._progress_at = self._loop.time()
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        """Every half keepalive (or op_timeout): ping when idle, drop a silent broker."""
        now = self._loop.time()
        if self._heard:
            self._heard, self._heard_at = False, now
        if self._sent:
            self._sent, self._sent_at = False, now
        if self._acks != self._acks_seen or not self._pending:
            self._acks_seen, self._progress_at = self._acks, now
        keepalive = self._keepalive
        if keepalive and now - self._heard_at > 1.5 * keepalive:
            silent = f"nothing from the broker for {now - self._heard_at:.0f} s"
            self.abort(LinkError("timeout", f"{silent} (keepalive {keepalive:g} s)"))
            return
        if now - self._progress_at > self._op_timeout:
            waiting = f"{len(self._pending)} publishes waiting"
            self.abort(LinkError("timeout", f"no PUBACK for {self._op_timeout:g} s, {waiting}"))
            return
        half = keepalive / 2
        if keepalive and (now - self._sent_at >= half or now - self._heard_at >= half):
            self.send(mqttwire.PINGREQ)
        self._timer = self._loop.call_later(self._interval, self._tick)

    def next_batch(self) -> asyncio.Future[None]:
        """A future that completes when the next message arrives in `inbox`."""
        self.wakeup = self._loop.create_future()
        return self.wakeup

    def abort(self, error: LinkError) -> None:
        """Drop the connection at once, without DISCONNECT: the broker publishes the will."""
        transport, self.transport = self.transport, None
        self._fail(error)
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        """Flush, DISCONNECT (so the will is not published) and close."""
        transport = self.transport
        if transport is None or self.error is not None:
            return
        self._flush()
        transport.write(mqttwire.disconnect(v5=self.v5))
        self.transport = None
        self._fail(LinkError("network", "disconnected"))
        transport.close()

    def _fail(self, error: LinkError) -> None:
        """End every wait on this connection with `error` (the first one to happen)."""
        if self.error is not None:
            return
        self.error = error
        waiters: list[asyncio.Future[int] | asyncio.Future[list[int]]] = [
            *self._pending.values(),
            *self._subscribing.values(),
            *(queued[4] for queued in self._queue),
        ]
        self._pending.clear()
        self._subscribing.clear()
        self._queue.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(LinkError(error.reason, str(error)))
        if not self.connack.done():
            self.connack.set_exception(LinkError(error.reason, str(error)))
        if self._timer is not None:
            self._timer.cancel()
        if self.reader is not None:
            self.reader.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_lost(self)


def retrieve(future: asyncio.Future[Connack]) -> None:
    if not future.cancelled():
        future.exception()
