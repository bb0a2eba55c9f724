"""A lean CoAP server on asyncio's datagram endpoint (RFC 7252 over UDP), for the simulator.

Written for the T7470 simulator (`bridge.sim.pager`), which must stay cheap: tests, the demo
and the benchmarks run the bridge against it on the same cores. Handlers are plain functions
(`bridge.sim.coap_request`) called synchronously; nothing creates a task per request and every
timer is a `loop.call_later` handle. Block2 lives in `bridge.sim.coap_blocks`, Observe
(RFC 7641) in `bridge.sim.coap_observe`.

What it does with a datagram:

- CON request: answered piggybacked in the ACK (same MID and token). The answer is kept for
  EXCHANGE_LIFETIME (at most RECENT_LIMIT answers), so a duplicate CON (same remote and MID) is
  answered again from that cache and never processed twice (§4.5).
- NON request: answered with a NON (a fresh MID, the same token).
- With `latency > 0`, a CON is acknowledged at once with an empty ACK and the response follows
  after `latency` seconds as a separate CON response (§5.2.2); a NON is answered after `latency`.
- Our own CONs (separate responses, notifications) are retransmitted until ACKed or given up
  (`bridge.sim.coap_reliable`).
- Empty CON (CoAP ping), and a CON that is not a request: RST. Malformed datagrams: RST when the
  header is readable and says CON, otherwise ignored (§4.2, §4.3).
- Unknown path: 4.04; refused options: see `bridge.sim.coap_request`.
- Bodies over one block (1024 bytes, or the smaller size a Block2 option asks for) go
  block-wise; later blocks (Block2 num > 0) come from `Blocks` without calling the handler. If
  the body has expired there, a GET is rendered afresh (the ETag tells the client whether it
  still matches); any other method is refused with 4.08, never executed twice.
- `silent`: every datagram is swallowed (the port stays bound, nothing answers).

Notifications a handler causes (`notify()` during a request) go out right after that request's
answer, so the client that made the change is not kept waiting behind them.

ICMP errors: the socket has IP_RECVERR (Linux), so a datagram sent to a port nobody listens on
any more comes back as an error naming that address; every exchange with it is failed and its
observers are dropped: a client that closed its socket is gone.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
import sys
import time
from collections.abc import Mapping
from typing import Final

from bridge.coapwire import (
    ACK,
    CON,
    CONTENT,
    CONTENT_FORMAT,
    EXCHANGE_LIFETIME,
    GET,
    NON,
    NOT_FOUND,
    OBSERVE,
    REQUEST_ENTITY_INCOMPLETE,
    RST,
    CoapFormatError,
    Message,
    decode,
    encode,
    uint,
)
from bridge.sim.coap_blocks import BLOCK_SZX, Answer, Blocks, Representation
from bridge.sim.coap_observe import Observer, Observers
from bridge.sim.coap_reliable import Address, Confirmables
from bridge.sim.coap_request import (
    Handler,
    Options,
    Refusal,
    Request,
    Response,
    options_of,
    parse_request,
    small_uint,
)

log = logging.getLogger(__name__)

# Answers kept for duplicate CONs. At 1,000 requests/s this covers ~8 s rather than 247 s:
# enough for the retransmissions that really happen on a loopback or LAN (the first after 2-3 s).
RECENT_LIMIT: Final = 8192
_EMPTY: Final = 0
_IP_RECVERR: Final = 11  # <linux/in.h>; the socket module does not export it
_IPV6_RECVERR: Final = 25  # <linux/in6.h>

Outcome = tuple[int, Options, bytes, Observer | None]  # code, options, payload, registered


class CoapServer(asyncio.DatagramProtocol):
    """Serves `routes` (path segments -> handler); `observable` is the path that takes Observe."""

    def __init__(
        self,
        routes: Mapping[tuple[str, ...], Handler],
        *,
        observable: tuple[str, ...] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.routes = dict(routes)
        self.observable = observable
        self.latency = latency
        self.silent = False
        self.duplicates = 0  # duplicate CONs answered from the cache
        self.observers = Observers(self._notify_one, self._end_observation)
        self._sock: socket.socket | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._recent: collections.OrderedDict[tuple[Address, int], tuple[float, bytes]] = (
            collections.OrderedDict()
        )
        self._confirmables = Confirmables(self._send)
        self._blocks = Blocks()
        self._mid = random.getrandbits(16)
        self._etags = random.getrandbits(32) << 32
        self._epoch = 0  # bumped on silence and close: late answers from before are dropped
        # Notifications raised while a request is handled, sent after its answer.
        self._answering = False
        self._after_answer: list[Response] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, host: str, port: int) -> int:
        """Bind `host:port` (0: any free port) and serve; returns the bound port."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if sys.platform == "linux":
                ipv6 = family == socket.AF_INET6
                level = socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP
                sock.setsockopt(level, _IPV6_RECVERR if ipv6 else _IP_RECVERR, 1)
            sock.bind(address)
            await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        bound: int = sock.getsockname()[1]
        return bound

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def close(self) -> None:
        """Stop serving: forget observers, pending answers and caches without a word."""
        self._forget()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._sock = None

    def set_silent(self, silent: bool) -> None:
        """Swallow every datagram; going silent forgets observers and pending answers."""
        if silent and not self.silent:
            self._forget()
        self.silent = silent

    def _forget(self) -> None:
        self._epoch += 1
        self._confirmables.clear()
        self._recent.clear()
        self._blocks.clear()
        self.observers.clear()

    # -- incoming --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.silent:
            return
        try:
            message = decode(data)
        except CoapFormatError:
            # §4.2: a CON we cannot parse is rejected with an RST, if its MID is readable.
            if len(data) >= 4 and data[0] >> 4 == 0x4 | CON:
                self._send(encode(RST, _EMPTY, data[2] << 8 | data[3], b""), addr)
            return
        mtype = message.mtype
        if mtype >= ACK:
            self._confirmables.answered(addr, message.mid, acked=mtype == ACK)
        elif not 0 < message.code < 32:  # a ping, or a response we never asked for
            if mtype == CON:
                self._send(encode(RST, _EMPTY, message.mid, b""), addr)
        elif mtype == CON and self._duplicate(addr, message.mid):
            return
        elif self.latency > 0:
            self._defer(addr, message)
        else:
            self._answer(addr, message)

    def _answer(self, addr: Address, message: Message) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request from %s: %r", addr, message)
        code, options, payload, _ = self._handle(addr, message)
        if message.mtype == CON:
            answer = encode(ACK, code, message.mid, message.token, options, payload)
            self._remember((addr, message.mid), answer)
        else:
            answer = encode(NON, code, self._next_mid(), message.token, options, payload)
        self._send(answer, addr)
        if self._after_answer:
            self._notify_held()

    def _duplicate(self, addr: Address, mid: int) -> bool:
        """Answer a CON seen before from the cache (§4.5); True when it was one."""
        seen = self._recent.get((addr, mid))
        if seen is None or seen[0] < time.monotonic():
            return False
        self.duplicates += 1
        self._send(seen[1], addr)
        return True

    def _defer(self, addr: Address, message: Message) -> None:
        """`latency` > 0: an empty ACK now (for a CON), the answer later (§5.2.2)."""
        if message.mtype == CON:
            empty_ack = encode(ACK, _EMPTY, message.mid, b"")
            self._remember((addr, message.mid), empty_ack)
            self._send(empty_ack, addr)
        loop = asyncio.get_running_loop()
        loop.call_later(self.latency, self._late, self._epoch, addr, message)

    def _late(self, epoch: int, addr: Address, message: Message) -> None:
        """The separate response to a request that waited `latency` seconds."""
        if epoch != self._epoch or self._transport is None:
            return
        code, options, payload, observer = self._handle(addr, message)
        mid = self._next_mid()
        if message.mtype != CON:
            self._send(encode(NON, code, mid, message.token, options, payload), addr)
        else:
            done = None
            if observer is not None:  # its notifications wait until this response is ACKed
                observer.busy = True
                done = observer.sent
            data = encode(CON, code, mid, message.token, options, payload)
            self._confirmables.send(addr, mid, data, done)
        if self._after_answer:
            self._notify_held()

    def error_received(self, exc: Exception) -> None:
        # With IP_RECVERR the error queue says which remote was unreachable; drain it all
        # (unread entries would keep the socket reporting an error forever).
        sock = self._sock
        while sock is not None:
            try:
                _, _, _, addr = sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:
                break
            if addr:
                self._unreachable(addr)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("socket error: %s", exc)

    def _unreachable(self, addr: Address) -> None:
        self._confirmables.fail_remote(addr)
        self.observers.drop_remote(addr)

    # -- requests and responses ------------------------------------------------------------

    def _handle(self, addr: Address, message: Message) -> Outcome:
        self._answering = True
        try:
            return self._process(addr, message)
        finally:
            self._answering = False

    def _process(self, addr: Address, message: Message) -> Outcome:
        """Handle one request: (code, options, payload, the observer it registered)."""
        try:
            request, block2 = parse_request(message, addr[1])
        except Refusal as refusal:
            return refusal.code, refusal.options, refusal.payload, None
        num, szx = (0, BLOCK_SZX) if block2 is None else (block2[0], min(block2[2], BLOCK_SZX))
        key = (addr, request.code, request.path, request.query)
        if num:
            representation = self._blocks.get(key)
            if representation is not None:
                return (*representation.cut(num, szx, None), None)
            if request.code != GET:
                return REQUEST_ENTITY_INCOMPLETE, [], b"no such body to continue", None
        handler = self.routes.get(request.path)
        response = Response(NOT_FOUND) if handler is None else handler(request)
        observer = None
        if request.code == GET and (request.observe is not None or self.observers):
            observer = self._observation(addr, message.token, request, response, continued=num)
        if len(response.payload) > 16 << szx:
            representation = self._blocks.keep(key, response, response.etag or self.new_etag())
            if observer is not None:
                _hold(observer, representation)
            return (*representation.cut(num, szx, response.observe), observer)
        return response.code, options_of(response), response.payload, observer

    def _observation(
        self, addr: Address, token: bytes, request: Request, response: Response, continued: int
    ) -> Observer | None:
        """RFC 7641 §3.1/§3.6: Observe 0 registers, Observe 1 or a plain GET deregisters."""
        key = (addr, token)
        if request.observe == 0 and request.path == self.observable and 64 <= response.code < 96:
            observer = self.observers.register(key, request.path, request.query)
            response.observe = observer.sequence
            return observer
        if not continued:  # fetching later blocks of a notification never deregisters
            self.observers.remove(key)
        return None

    # -- Observe notifications -------------------------------------------------------------

    def notify(self, payload: bytes, content_format: int | None) -> None:
        """Queue `payload` as the next notification for every observer (in order, each ACKed)."""
        note = Response(CONTENT, payload, content_format)
        if self._answering:
            self._after_answer.append(note)
        else:
            self.observers.broadcast(note)

    def _notify_held(self) -> None:
        notes, self._after_answer = self._after_answer, []
        for note in notes:
            self.observers.broadcast(note)

    def _notify_one(self, observer: Observer, note: Response) -> None:
        """Send `note` to `observer` as a CON with its current sequence; `observer.sent` hears."""
        if self._transport is None:
            return
        answer: Answer
        if len(note.payload) > 16 << BLOCK_SZX:
            key = (observer.addr, GET, observer.path, observer.query)
            representation = self._blocks.keep(key, note, self.new_etag())
            _hold(observer, representation)
            answer = representation.cut(0, BLOCK_SZX, observer.sequence)
        else:
            options = [(OBSERVE, uint(observer.sequence))]
            if note.content_format is not None:
                options.append((CONTENT_FORMAT, small_uint(note.content_format)))
            answer = note.code, options, note.payload
        mid = self._next_mid()
        data = encode(CON, answer[0], mid, observer.token, answer[1], answer[2])
        self._confirmables.send(observer.addr, mid, data, observer.sent)

    def _end_observation(self, observer: Observer, code: int) -> None:
        """Tell a dropped observer its observation is over: an error response ends it (§3.2)."""
        self._send(encode(NON, code, self._next_mid(), observer.token), observer.addr)

    # -- outgoing --------------------------------------------------------------------------

    def _send(self, data: bytes, addr: Address, *, again: bool = True) -> None:
        # Straight to the socket: a datagram either leaves now or is lost (a full send buffer),
        # which CoAP's retransmissions cover; the transport's buffering would only add work.
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, addr)
        except ConnectionRefusedError:
            # An ICMP error about an earlier datagram was pending and failed this send instead:
            # read which remote it was about, then send once more.
            self.error_received(ConnectionRefusedError())
            if again:
                self._send(data, addr, again=False)
        except OSError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("send to %s failed: %s", addr, exc)

    def _remember(self, key: tuple[Address, int], answer: bytes) -> None:
        recent = self._recent
        recent[key] = (time.monotonic() + EXCHANGE_LIFETIME, answer)
        if len(recent) > RECENT_LIMIT:
            recent.popitem(last=False)

    def _next_mid(self) -> int:
        self._mid = mid = (self._mid + 1) & 0xFFFF
        return mid

    def new_etag(self) -> bytes:
        """A fresh ETag for a body that has none of its own (block-wise transfers need one)."""
        self._etags += 1
        return self._etags.to_bytes(8, "big")


def _hold(observer: Observer, representation: Representation) -> None:
    """Notifications to `observer` wait until `representation`'s last block was fetched."""
    representation.waiter = observer
    observer.hold(representation)
