"""The CoAP client seam: how the bridge talks to a T7470 (RFC 7252, 7641 Observe, 7959 Block2).

`Transmitter` talks to one T7470 at `coap://host:port`. Above it nothing knows CoAP messages:
replies are `CoapReply` (code, payload, ETag) and failures are `bridge.errors`:

- no answer within `timeout` seconds                 -> UpstreamTimeout
- the network says unreachable/refused (ICMP), etc.  -> UpstreamUnavailable
- an RST, a broken block-wise transfer, nonsense     -> UpstreamError
- 4.xx/5.xx answers are *not* exceptions: `CoapReply.ok` is False and the body is kept.

The client is our own, on asyncio datagram endpoints (`bridge.coapendpoint` for the message
layer, `bridge.coapobserve` for notifications, `bridge.coapwire` for the codec), not a general
CoAP library: the device needs one peer, CON requests one at a time, Block2 and Observe, and a
general client's per-message machinery (message/option objects, token and message managers,
pipes, address objects per datagram) was a quarter of the bridge's CPU (aiocoap 0.4.17: ~0.9 ms
of CPU per request against the simulator, this client ~0.15 ms, most of it the send syscall).
The simulator's server shares only the codec; aiocoap, an independent implementation, talks to
both in the tests (tests/adapter/test_coap_interop.py, test_sim_pager_interop.py).

Endpoints (one connected UDP socket = one source port = one MID and token space):

- Requests go one at a time (a constrained device expects NSTART=1 from us anyway) over a
  request endpoint that is replaced after `rotate_after` requests (each block of a block-wise
  answer counts: it takes a message ID). CoAP message IDs are 16-bit and must not be reused
  within EXCHANGE_LIFETIME (247 s, RFC 7252 §4.8.2): one socket sending faster than ~265 CON/s
  for four minutes would wrap them. A fresh socket is a fresh endpoint with its own MID space,
  so rotation removes that ceiling. Because requests are serialised, the old endpoint has
  nothing in flight when it is rotated out and is closed at once.
- After a timeout, a network error (ICMP) or a cancelled exchange the request endpoint is
  discarded too: its unanswered CON would otherwise still be retransmitted, a late answer to it
  is of no use, and a socket that saw ICMP errors is best not trusted. The next request simply
  starts on a fresh endpoint, so a restarted transmitter is reached.
- A block-wise answer (payloads over 1024 bytes, RFC 7959) is fetched whole on the same endpoint
  within the same `timeout`: the device keeps the representation for that socket, and the
  request lock is held throughout, so no other request interleaves.
- Each Observe registration gets its own endpoint, closed when the observation ends. Rotation
  therefore never disturbs an observation, an observation never holds the request lock, and a
  re-registration always starts from a clean socket. A notification larger than one block is
  completed with plain GETs of the same resource on that endpoint before it is yielded.

The host name is resolved once per Transmitter; Uri-Host and Uri-Port are never sent (the device
is addressed by IP and has no virtual hosts).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import msgspec

from bridge import coapwire
from bridge.coapendpoint import Endpoint, EndpointClosed, Reset
from bridge.coapobserve import Inbox
from bridge.coapwire import (
    BLOCK2,
    CONTENT_FORMAT,
    ETAG,
    OBSERVE,
    URI_PATH,
    URI_QUERY,
    Message,
    pack_options,
    parse_block,
    uint,
)
from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.t7470 import CONTENT_FORMAT_JSON

_METHODS: Final = {
    "GET": coapwire.GET,
    "POST": coapwire.POST,
    "PUT": coapwire.PUT,
    "DELETE": coapwire.DELETE,
}
# "2.05" for every code byte, built once: the hot path only looks it up.
_CONTENT_FORMAT: Final = (CONTENT_FORMAT, uint(CONTENT_FORMAT_JSON))
_OBSERVE_REGISTER: Final = (OBSERVE, uint(0))
_OBSERVE_DEREGISTER: Final = (OBSERVE, uint(1))
# A block-wise body larger than this is refused (10,000 sessions are ~2.3 MB).
_MAX_BODY: Final = 16 * 1024 * 1024
# The device pings observers every 30 s; three missed pings mean the observation is gone
# (a device that restarted forgets its observers without telling anyone).
OBSERVE_IDLE: Final = 100.0
# Notifications received but not yet consumed; past this the observation is failed (see Inbox).
OBSERVE_BACKLOG: Final = 1000


class CoapReply(msgspec.Struct, frozen=True):
    """One response from the device, as the bridge sees it."""

    code: str  # dotted, e.g. "2.05", "4.04"
    payload: bytes
    etag: bytes | None = None

    @property
    def ok(self) -> bool:
        """True for 2.xx (success) codes."""
        return self.code.startswith("2.")


class _Request:
    """One request's packed options; `block(n, szx)` adds Block2 for the follow-ups."""

    __slots__ = ("code", "last", "options", "payload")

    def __init__(self, code: int, options: bytes, last: int, payload: bytes) -> None:
        self.code = code
        self.options = options
        self.last = last  # the number of the last option packed (Block2 comes after it)
        self.payload = payload

    def block(self, num: int, szx: int) -> bytes:
        return self.options + pack_options(((BLOCK2, coapwire.block(num, False, szx)),), self.last)


class Transmitter:
    """Client for one T7470 at `uri` (coap://host:port). The constructor does no I/O."""

    def __init__(self, uri: str, *, timeout: float, rotate_after: int = 30000) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "coap" or not parts.hostname:
            raise ValueError(f"expected coap://host[:port], got {uri!r}")
        self.uri = uri
        self._host = parts.hostname
        self._port = parts.port or 5683
        self._address: tuple[int, tuple[object, ...]] | None = None
        self._timeout = timeout
        self._rotate_after = max(1, rotate_after)
        self._lock = asyncio.Lock()
        self._current: Endpoint | None = None
        self._created = 0
        self._observing: set[Endpoint] = set()
        # Uri-Path options packed once per (path, number of the option before them).
        self._paths: dict[tuple[str, int], tuple[bytes, int]] = {}

    @property
    def endpoints_used(self) -> int:
        """How many UDP client endpoints (sockets) have been created so far."""
        return self._created

    async def start(self) -> None:
        """Open the first request endpoint, so the first command pays no set-up cost."""
        async with self._lock:
            if self._current is None:
                self._current = await self._new_endpoint()

    async def close(self) -> None:
        """Close every endpoint. Observations still running end with UpstreamUnavailable."""
        async with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = None
        for endpoint in list(self._observing):
            endpoint.close()
        self._observing.clear()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        etag: bytes | None = None,
        gate: Callable[[], None] | None = None,
    ) -> CoapReply:
        """One confirmable exchange; exchanges are serialised, `timeout` applies to each.

        `gate`, if given, is called once this request's turn has come, before anything is sent;
        whatever it raises ends the request unsent (the circuit breaker uses it: a request
        queued behind others while the device went dark must not wait out its own timeout).
        Raises UpstreamTimeout, UpstreamUnavailable or UpstreamError (malformed exchange);
        a 4.xx/5.xx answer is returned, not raised.
        """
        code = _METHODS.get(method)
        if code is None:
            raise ValueError(f"unsupported CoAP method {method!r}")
        request = self._request(code, path, query, body, etag)
        async with self._lock:
            if gate is not None:
                gate()
            endpoint = self._current
            if endpoint is None or endpoint.closed or endpoint.used >= self._rotate_after:
                if endpoint is not None:
                    endpoint.close()
                endpoint = self._current = await self._new_endpoint()
            try:
                deadline = asyncio.get_running_loop().time() + self._timeout
                response = await endpoint.request(code, request.options, request.payload, deadline)
                if response.options and response.option(BLOCK2) is not None:
                    return await self._whole(endpoint, request, response, deadline)
                return _reply(response)
            except BaseException as exc:
                # Whatever went wrong, this socket may hold a stale exchange: drop it.
                self._current = None
                endpoint.close()
                if isinstance(exc, Exception):
                    raise self._mapped(exc) from exc
                raise

    async def observe(
        self,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        idle: float = OBSERVE_IDLE,
    ) -> AsyncIterator[CoapReply]:
        """Register an Observe GET; yield the first response, then each notification.

        Ends (StopAsyncIteration) when the device refuses or ends the observation (a reply
        without Observe, or a 4.xx/5.xx, is yielded first); raises UpstreamTimeout when
        nothing arrives for `idle` seconds or the registration is not answered in `timeout`,
        UpstreamUnavailable when the network reports the device unreachable, UpstreamError when
        more than OBSERVE_BACKLOG notifications are left unconsumed. Either way the caller
        re-registers by calling `observe()` again.
        """
        endpoint = await self._new_endpoint()
        self._observing.add(endpoint)
        inbox = Inbox(
            OBSERVE_BACKLOG, f"no notification from {self.uri} for {idle:g} s", {"path": path}
        )
        token = endpoint.new_token()
        endpoint.listen(token, inbox)
        plain = self._request(coapwire.GET, path, query, None, None)
        try:
            registration = self._request(coapwire.GET, path, query, None, None, _OBSERVE_REGISTER)
            yield await self._registered(endpoint, registration, plain, token, inbox)
            if not inbox.registered:
                return
            inbox.watch(idle)
            while (note := await self._next(endpoint, inbox, plain)) is not None:
                yield note
        finally:
            inbox.close()
            if inbox.registered and not inbox.ended and not endpoint.closed:
                # RFC 7641 §3.6: deregister. Not awaited: the socket closes now, and a device
                # that missed this gets an ICMP error (or would get an RST) for its next one.
                deregister = self._request(
                    coapwire.GET, path, query, None, None, _OBSERVE_DEREGISTER
                )
                endpoint.send_non(coapwire.GET, deregister.options, token)
            endpoint.close()
            self._observing.discard(endpoint)

    # -- internals -------------------------------------------------------------------------

    async def _registered(
        self,
        endpoint: Endpoint,
        registration: _Request,
        plain: _Request,
        token: bytes,
        inbox: Inbox,
    ) -> CoapReply:
        """The registration's (whole) first response; tells `inbox` whether we are registered."""
        try:
            deadline = asyncio.get_running_loop().time() + self._timeout
            response = await endpoint.request(
                coapwire.GET, registration.options, b"", deadline, token=token
            )
            inbox.begin(response)
            if response.option(BLOCK2) is not None:
                return await self._whole(endpoint, plain, response, deadline)
        except Exception as exc:
            raise self._mapped(exc) from exc
        return _reply(response)

    async def _next(self, endpoint: Endpoint, inbox: Inbox, plain: _Request) -> CoapReply | None:
        """The next notification (whole), or None when the device ended the observation."""
        try:
            message = await inbox.get()
            if message is None:
                return None
            if message.option(BLOCK2) is not None:
                deadline = asyncio.get_running_loop().time() + self._timeout
                return await self._whole(endpoint, plain, message, deadline)
        except Exception as exc:
            raise self._mapped(exc) from exc
        return _reply(message)

    async def _whole(
        self, endpoint: Endpoint, request: _Request, first: Message, deadline: float
    ) -> CoapReply:
        """Complete a block-wise response (RFC 7959 §2.4) by fetching the following blocks.

        Every block must come from the same representation: same code, same ETag, in order. A
        GET whose representation changed midway starts over once; anything else fails.
        """
        restartable = request.code == coapwire.GET
        response = first
        etag = first.option(ETAG)
        parts: list[bytes] = []
        offset = 0
        while True:
            value = response.option(BLOCK2)
            num, more, szx = parse_block(value) if value is not None else (0, False, 6)
            size = 16 << szx
            if (
                (value is None and offset)
                or response.code != first.code
                or response.option(ETAG) != etag
                or num * size != offset
                or (more and len(response.payload) != size)
            ):
                if not restartable:
                    raise UpstreamError(
                        f"block-wise answer from {self.uri} changed midway",
                        detail={"uri": self.uri},
                    )
                restartable = False
                parts.clear()
                offset = 0
                response = await endpoint.request(
                    request.code, request.block(0, szx), request.payload, deadline
                )
                first, etag = response, response.option(ETAG)
                continue
            parts.append(response.payload)
            offset += len(response.payload)
            if not more:
                break
            if offset > _MAX_BODY:
                raise UpstreamError(f"answer from {self.uri} larger than {_MAX_BODY} bytes")
            response = await endpoint.request(
                request.code, request.block(offset // size, szx), request.payload, deadline
            )
        return CoapReply(coapwire.dotted(first.code), b"".join(parts), etag)

    async def _new_endpoint(self) -> Endpoint:
        try:
            if self._address is None:
                self._address = await self._resolve()
            endpoint = await Endpoint.open(*self._address)
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot open a UDP socket to {self.uri}: {exc}", detail={"uri": self.uri}
            ) from exc
        self._created += 1
        return endpoint

    async def _resolve(self) -> tuple[int, tuple[object, ...]]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        return family, address

    def _request(
        self,
        code: int,
        path: str,
        query: Mapping[str, str | int] | None,
        body: bytes | None,
        etag: bytes | None,
        observe: tuple[int, bytes] | None = None,
    ) -> _Request:
        head: list[tuple[int, bytes]] = []
        if etag is not None:
            head.append((ETAG, etag))
        if observe is not None:
            head.append(observe)
        previous = head[-1][0] if head else 0
        key = (path, previous)
        cached = self._paths.get(key)
        if cached is None:
            segments = [(URI_PATH, s.encode()) for s in path.split("/") if s]
            last = URI_PATH if segments else previous
            cached = self._paths[key] = (pack_options(segments, previous), last)
        options = pack_options(head) + cached[0] if head else cached[0]
        last = cached[1]
        tail: list[tuple[int, bytes]] = []
        if body is not None:
            tail.append(_CONTENT_FORMAT)
        if query:
            tail += [(URI_QUERY, f"{k}={v}".encode()) for k, v in query.items()]
        if tail:
            options += pack_options(tail, last)
            last = tail[-1][0]
        return _Request(code, options, last, body or b"")

    def _mapped(self, exc: Exception) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        detail = {"uri": self.uri}
        if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
            return UpstreamTimeout(
                f"no answer from {self.uri} within {self._timeout:g} s", detail=detail
            )
        if isinstance(exc, EndpointClosed):
            return UpstreamUnavailable(f"the CoAP client for {self.uri} was closed", detail=detail)
        if isinstance(exc, OSError):
            # ICMP port/host unreachable arrives on the connected socket as ConnectionRefusedError
            # (or another OSError), reported by asyncio through error_received.
            return UpstreamUnavailable(f"{self.uri} is unreachable: {exc}", detail=detail)
        if isinstance(exc, Reset):
            return UpstreamError(f"{self.uri} rejected the request (RST)", detail=detail)
        return UpstreamError(f"CoAP exchange with {self.uri} failed: {exc!r}", detail=detail)


def _reply(message: Message) -> CoapReply:
    """A whole (unblocked) response as the bridge sees it."""
    return CoapReply(coapwire.dotted(message.code), message.payload, message.option(ETAG))
