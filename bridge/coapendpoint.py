"""One CoAP client endpoint: a connected UDP socket and the RFC 7252 message layer over it.

Below `bridge.coap.Transmitter` (which holds the policy: serialising, rotation, Block2, Observe),
above the socket. An `Endpoint` is an `asyncio.DatagramProtocol` on a socket connected to the
device, so the kernel filters datagrams from anyone else and reports ICMP errors for our sends
(`error_received`, e.g. ConnectionRefusedError for port unreachable). Its own MID and token
spaces start at random values (RFC 7252 §4.4, §5.3.1) and count up.

Exchanges (`request`): a confirmable request, retransmitted after ACK_TIMEOUT x a random factor
up to ACK_RANDOM_FACTOR, doubling, at most MAX_RETRANSMIT times (§4.2, §4.8), all bounded by the
caller's `deadline` (loop time). One future per exchange and one `call_at` timer, rescheduled in
place; nothing else is allocated per request. The future resolves with the response `Message`:
piggybacked on the ACK, or separate (an empty ACK first, then a CON or NON carrying our token,
§5.2.2; a CON one is ACKed). It fails with TimeoutError at the deadline or once retransmission
is exhausted, `Reset` on RST, the OSError the network reported, or `EndpointClosed`.

Incoming CON/NON messages are deduplicated by message ID (§4.5): a duplicate is answered as the
original was (ACK or RST) and never processed twice. Messages for a token with a `Listener`
(an Observe registration) go to it after its exchange completed; CON messages nobody expects get
an RST (§4.2), which also tells a device that still notifies a forgotten observer to stop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
from typing import Final, Protocol

from bridge.coapwire import (
    ACK,
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    CON,
    MAX_RETRANSMIT,
    NON,
    RST,
    CoapFormatError,
    Message,
    decode,
    header,
)

log = logging.getLogger(__name__)

# Peer message IDs remembered for deduplication (a window of the latest, not EXCHANGE_LIFETIME:
# far cheaper, and enough). At the few hundred notifications per second of a busy device this
# spans ~15 s, the device's first two retransmissions (2-3 s, 6-9 s) of a CON whose ACK we sent
# and the network lost; at ordinary rates it spans minutes.
_SEEN: Final = 4096
_EMPTY_ACK: Final = 0x60  # version 1, type ACK, no token
_EMPTY_RST: Final = 0x70
_REQUEST_CLASS_END: Final = 32  # codes 0.01-0.31 are requests


class EndpointClosed(Exception):
    """The endpoint was closed while the exchange or observation was still running."""


class Reset(Exception):
    """The device answered our confirmable message with an RST (it rejected it)."""


class Mismatch(Exception):
    """The device's answer does not belong to our exchange (e.g. its ACK echoes another token)."""


class Listener(Protocol):
    """Receives the messages for one Observe registration's token."""

    def notify(self, message: Message) -> bool:
        """Take one notification; False rejects it (an RST is sent for a CON)."""

    def fail(self, exc: BaseException) -> None:
        """The endpoint failed or was closed: no more notifications will come."""


class _Exchange:
    __slots__ = (
        "acked",
        "data",
        "deadline",
        "future",
        "handle",
        "mid",
        "timeout",
        "token",
        "tries",
    )

    def __init__(
        self, future: asyncio.Future[Message], token: bytes, mid: int, data: bytes, deadline: float
    ) -> None:
        self.future = future
        self.token = token
        self.mid = mid
        self.data = data
        self.deadline = deadline
        self.acked = False
        self.tries = 0
        self.timeout = 0.0
        self.handle: asyncio.TimerHandle | None = None


class Endpoint(asyncio.DatagramProtocol):
    """A connected UDP socket to the device with the CoAP message layer; see the module doc."""

    __slots__ = (
        "_by_mid",
        "_by_token",
        "_listeners",
        "_loop",
        "_mid",
        "_ring",
        "_ring_at",
        "_seen",
        "_token",
        "_transport",
        "closed",
        "used",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._mid = secrets.randbits(16)
        self._token = secrets.randbits(32)
        self._by_token: dict[bytes, _Exchange] = {}
        self._by_mid: dict[int, _Exchange] = {}
        self._listeners: dict[bytes, Listener] = {}
        self._seen: dict[int, int | None] = {}  # peer MID -> what we answered (ACK, RST, None)
        self._ring = [-1] * _SEEN  # the same MIDs in arrival order, to forget the oldest
        self._ring_at = 0
        self.closed = False
        self.used = 0  # requests sent (the Transmitter rotates on this)

    @classmethod
    async def open(cls, family: int, address: tuple[object, ...]) -> Endpoint:
        """A fresh endpoint on a new socket connected to `address` (a resolved sockaddr)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)  # UDP: no packet sent, only the peer fixed and a port bound
            _, endpoint = await loop.create_datagram_endpoint(lambda: cls(loop), sock=sock)
        except BaseException:
            sock.close()
            raise
        return endpoint

    # -- exchanges -------------------------------------------------------------------------

    def new_token(self) -> bytes:
        self._token = token = (self._token + 1) & 0xFFFFFFFF
        return token.to_bytes(4, "big")

    def request(
        self,
        code: int,
        options: bytes,
        payload: bytes,
        deadline: float,
        token: bytes | None = None,
    ) -> asyncio.Future[Message]:
        """Send one confirmable request (`options` already packed); its response, see above."""
        if token is None:
            token = self.new_token()
        self._mid = mid = (self._mid + 1) & 0xFFFF
        data = header(CON, code, mid, token) + options
        if payload:
            data += b"\xff" + payload
        future = self._loop.create_future()
        if self.closed:
            future.set_exception(EndpointClosed())
            return future
        exchange = _Exchange(future, token, mid, data, deadline)
        self._by_token[token] = exchange
        self._by_mid[mid] = exchange
        self.used += 1
        exchange.timeout = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)  # noqa: S311 - jitter
        self._send(data)  # may fail the exchange at once (error_received)
        if not future.done():
            self._schedule(exchange, self._loop.time())
        return future

    def send_non(self, code: int, options: bytes, token: bytes) -> None:
        """Fire-and-forget non-confirmable request (a deregistration: its answer is not awaited)."""
        self._mid = mid = (self._mid + 1) & 0xFFFF
        self._send(header(NON, code, mid, token) + options)

    def listen(self, token: bytes, listener: Listener) -> None:
        """Route messages carrying `token` to `listener` once no exchange is waiting for it."""
        self._listeners[token] = listener

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket; every running exchange and listener fails with `exc`."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail_all(exc or EndpointClosed())

    def _schedule(self, exchange: _Exchange, now: float) -> None:
        retransmit = now + exchange.timeout
        if exchange.acked or retransmit >= exchange.deadline:
            exchange.handle = self._loop.call_at(exchange.deadline, self._expire, exchange)
        else:
            exchange.handle = self._loop.call_at(retransmit, self._retransmit, exchange)

    def _retransmit(self, exchange: _Exchange) -> None:
        if exchange.tries >= MAX_RETRANSMIT:
            self._expire(exchange)  # the last wait after the last retransmission has passed
            return
        exchange.tries += 1
        exchange.timeout *= 2
        if log.isEnabledFor(logging.DEBUG):
            log.debug("retransmitting MID %d (%d)", exchange.mid, exchange.tries)
        self._send(exchange.data)
        if not exchange.future.done():
            self._schedule(exchange, self._loop.time())

    def _expire(self, exchange: _Exchange) -> None:
        self._finish(exchange)
        if not exchange.future.done():
            exchange.future.set_exception(TimeoutError())

    def _finish(self, exchange: _Exchange) -> None:
        if exchange.handle is not None:
            exchange.handle.cancel()
        if self._by_token.get(exchange.token) is exchange:
            del self._by_token[exchange.token]
        if self._by_mid.get(exchange.mid) is exchange:
            del self._by_mid[exchange.mid]

    def _fail(self, exchange: _Exchange, exc: BaseException) -> None:
        self._finish(exchange)
        if not exchange.future.done():
            exchange.future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for exchange in list(self._by_token.values()):
            self._fail(exchange, exc)
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for listener in listeners:
            listener.fail(exc)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.sendto(data)

    # -- asyncio.DatagramProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._fail_all(exc or EndpointClosed())

    def error_received(self, exc: Exception) -> None:
        # ICMP (port/host unreachable) for something we sent: the device is not there, or not
        # on this port. Everything running fails with it and the socket is not trusted again.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("CoAP endpoint error: %r", exc)
        self.close(exc)

    def datagram_received(self, data: bytes, addr: object) -> None:  # noqa: ARG002 - connected socket: always the device
        try:
            message = decode(data)
        except CoapFormatError:
            # §4.2: a confirmable message with a format error is rejected; anything else ignored.
            if len(data) >= 4 and data[0] >> 4 == 0x4 | CON:  # version 1, confirmable
                self._reply(_EMPTY_RST, data[2] << 8 | data[3])
            return
        mtype = message.mtype
        if mtype >= ACK:
            self._answered(message)
            return
        mid = message.mid
        if mid in self._seen:  # a duplicate: answer as before, do not process again
            answer = self._seen[mid]
            if answer is not None:
                self._reply(answer, mid)
            return
        accepted = self._incoming(message)
        answer = (_EMPTY_ACK if accepted else _EMPTY_RST) if mtype == CON else None
        self._remember(mid, answer)
        if answer is not None:
            self._reply(answer, mid)

    def _remember(self, mid: int, answer: int | None) -> None:
        at = self._ring_at
        oldest = self._ring[at]
        if oldest >= 0:
            del self._seen[oldest]
        self._ring[at] = mid
        self._ring_at = (at + 1) % _SEEN
        self._seen[mid] = answer

    def _answered(self, message: Message) -> None:
        """An ACK or RST for one of our confirmable messages."""
        exchange = self._by_mid.get(message.mid)
        if exchange is None:
            return  # late, duplicate, or for a message we no longer care about
        if message.mtype == RST:
            self._fail(exchange, Reset())
        elif message.code == 0:
            # Empty ACK: the response will come separately. Stop retransmitting; the deadline
            # still bounds the wait.
            del self._by_mid[exchange.mid]
            exchange.acked = True
            if exchange.handle is not None:
                exchange.handle.cancel()
            self._schedule(exchange, self._loop.time())
        elif message.token != exchange.token:
            self._fail(exchange, Mismatch(f"ACK for MID {message.mid} echoes another token"))
        else:
            self._finish(exchange)
            if not exchange.future.done():
                exchange.future.set_result(message)

    def _incoming(self, message: Message) -> bool:
        """A CON or NON from the device; True accepts it (ACKed if CON), False rejects it."""
        if message.code == 0 or message.code < _REQUEST_CLASS_END:
            return False  # a ping (empty CON) or a request: we serve nothing
        exchange = self._by_token.get(message.token)
        if exchange is not None:  # a separate response
            self._finish(exchange)
            if not exchange.future.done():
                exchange.future.set_result(message)
            return True
        listener = self._listeners.get(message.token)
        if listener is not None:
            return listener.notify(message)
        return False

    def _reply(self, first: int, mid: int) -> None:
        self._send(bytes((first, 0, mid >> 8, mid & 0xFF)))
