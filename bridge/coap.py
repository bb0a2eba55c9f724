"""The CoAP client seam: the only bridge module that imports aiocoap on the client side.

`Transmitter` talks to one T7470 at `coap://host:port`. Above it nothing knows aiocoap: replies
are `CoapReply` (code, payload, ETag) and failures are `bridge.errors`:

- no answer within `timeout` seconds                 -> UpstreamTimeout
- the network says unreachable/refused (ICMP), etc.  -> UpstreamUnavailable
- 4.xx/5.xx answers are *not* exceptions: `CoapReply.ok` is False and the body is kept.

Endpoints (one aiocoap client context = one UDP socket = one source port = one MID space):

- Requests go one at a time (a constrained device expects NSTART=1 from us anyway) over a
  request endpoint that is replaced after `rotate_after` requests. CoAP message IDs are 16-bit
  and must not be reused within EXCHANGE_LIFETIME (247 s, RFC 7252 §4.8.2); measured here,
  aiocoap fails from request 65,536 on when one socket sends faster than ~265 CON/s for four
  minutes. A fresh socket is a fresh endpoint with its own MID space, so rotation removes that
  ceiling. Because requests are serialised, the old endpoint has nothing in flight when it is
  rotated out and is shut down at once.
- After a timeout, a network error or a cancelled exchange the request endpoint is discarded
  too: aiocoap keeps retransmitting an unanswered CON for up to 45 s and backlogs every later CON
  to the same peer behind it (NSTART=1), and a context that saw ICMP errors is best not trusted.
  The next request simply starts on a fresh endpoint, so a restarted transmitter is reached.
- Each Observe registration gets its own endpoint, closed when the observation ends. Rotation
  therefore never disturbs an observation, an observation never holds the request lock, and a
  re-registration always starts from a clean socket. An observation uses one MID (the
  registration); the notifications' ACKs reuse the device's MIDs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import aiocoap
import aiocoap.error
import msgspec
from aiocoap.message import UndecidedRemote
from aiocoap.numbers.codes import Code

from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.t7470 import CONTENT_FORMAT_JSON

log = logging.getLogger(__name__)

_METHODS: Final = {
    "GET": Code.GET,
    "POST": Code.POST,
    "PUT": Code.PUT,
    "DELETE": Code.DELETE,
}
# "2.05" for every code byte, built once: the hot path only looks it up.
_DOTTED: Final = {code: f"{code >> 5}.{code & 0x1F:02d}" for code in range(256)}
# The device pings observers every 30 s; three missed pings mean the observation is gone
# (a device that restarted forgets its observers without telling anyone).
OBSERVE_IDLE: Final = 100.0
# Notifications received but not yet consumed; past this the observation is failed (see _Inbox).
OBSERVE_BACKLOG: Final = 1000
# The transports aiocoap would try by default include TCP, TLS, WebSockets and DTLS; the T7470
# speaks plain CoAP over UDP only.
_TRANSPORTS: Final = ["udp6"]


class CoapReply(msgspec.Struct, frozen=True):
    """One response from the device, as the bridge sees it."""

    code: str  # dotted, e.g. "2.05", "4.04"
    payload: bytes
    etag: bytes | None = None

    @property
    def ok(self) -> bool:
        """True for 2.xx (success) codes."""
        return self.code.startswith("2.")


class _Endpoint:
    """One client context (UDP socket) and the peer address resolved on it."""

    __slots__ = ("context", "remote", "used")

    def __init__(self, context: Any) -> None:
        self.context = context
        self.remote: Any = None  # the device's address, cached after the first reply
        self.used = 0


class Transmitter:
    """Client for one T7470 at `uri` (coap://host:port). The constructor does no I/O."""

    def __init__(self, uri: str, *, timeout: float, rotate_after: int = 30000) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "coap" or not parts.hostname:
            raise ValueError(f"expected coap://host[:port], got {uri!r}")
        self.uri = uri
        self._netloc = parts.netloc.rpartition("@")[2]
        self._timeout = timeout
        self._rotate_after = max(1, rotate_after)
        self._lock = asyncio.Lock()
        self._current: _Endpoint | None = None
        self._created = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._observing: set[_Endpoint] = set()
        self._paths: dict[str, tuple[str, ...]] = {}

    @property
    def endpoints_used(self) -> int:
        """How many UDP client endpoints (contexts) have been created so far."""
        return self._created

    async def start(self) -> None:
        """Open the first request endpoint, so the first command pays no set-up cost."""
        async with self._lock:
            if self._current is None:
                self._current = await self._new_endpoint()

    async def close(self) -> None:
        """Shut every endpoint down. Observations still running end with an UpstreamError."""
        async with self._lock:
            if self._current is not None:
                self._retire(self._current)
                self._current = None
        for endpoint in list(self._observing):
            self._retire(endpoint)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

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
        async with self._lock:
            if gate is not None:
                gate()
            endpoint = self._current
            if endpoint is None or endpoint.used >= self._rotate_after:
                if endpoint is not None:
                    self._retire(endpoint)
                endpoint = self._current = await self._new_endpoint()
            endpoint.used += 1
            message = self._message(endpoint, code, path, query, body, etag)
            try:
                async with asyncio.timeout(self._timeout):
                    response = await endpoint.context.request(message).response
            except BaseException as exc:
                # Whatever went wrong, this socket may still be retransmitting: drop it.
                self._current = None
                self._retire(endpoint)
                if isinstance(exc, Exception):
                    raise self._mapped(exc) from exc
                raise
            if endpoint.remote is None:
                endpoint.remote = response.remote
            return _reply(response)

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
        UpstreamUnavailable when the network reports the device unreachable. Either way the
        caller re-registers by calling `observe()` again.
        """
        endpoint = await self._new_endpoint()
        self._observing.add(endpoint)
        inbox = _Inbox()
        observation: Any = None
        try:
            observation, first = await self._register(endpoint, path, query, inbox)
            yield first
            if first.ok and inbox.registered:
                while (note := await self._next_notification(inbox, idle, path)) is not None:
                    yield note
        finally:
            if observation is not None and not observation.cancelled:
                observation.cancel()
            if endpoint in self._observing:
                self._retire(endpoint)

    async def _register(
        self,
        endpoint: _Endpoint,
        path: str,
        query: Mapping[str, str | int] | None,
        inbox: _Inbox,
    ) -> tuple[Any, CoapReply]:
        message = self._message(endpoint, Code.GET, path, query, None, None, observe=0)
        try:
            async with asyncio.timeout(self._timeout):
                request = endpoint.context.request(message)
                inbox.attach(request.observation)
                response = await request.response
        except Exception as exc:
            raise self._mapped(exc) from exc
        # A reply without the Observe option means the device did not register us.
        inbox.registered = response.opt.observe is not None
        return request.observation, _reply(response)

    async def _next_notification(self, inbox: _Inbox, idle: float, path: str) -> CoapReply | None:
        """The next notification, or None when the device ended the observation."""
        try:
            async with asyncio.timeout(idle):
                return await inbox.get()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no notification from {self.uri} for {idle:g} s", detail={"path": path}
            ) from exc
        except (aiocoap.error.ObservationCancelled, aiocoap.error.NotObservable):
            return None
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._mapped(exc) from exc

    # -- internals -------------------------------------------------------------------------

    async def _new_endpoint(self) -> _Endpoint:
        try:
            context = await aiocoap.Context.create_client_context(transports=_TRANSPORTS)
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot open a UDP socket: {exc}") from exc
        self._created += 1
        return _Endpoint(context)

    def _retire(self, endpoint: _Endpoint) -> None:
        """Shut the endpoint's context down in the background (it may be mid-callback)."""
        self._observing.discard(endpoint)
        task = asyncio.get_running_loop().create_task(_shutdown(endpoint.context))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _message(
        self,
        endpoint: _Endpoint,
        code: Code,
        path: str,
        query: Mapping[str, str | int] | None,
        body: bytes | None,
        etag: bytes | None,
        observe: int | None = None,
    ) -> Any:
        segments = self._paths.get(path)
        if segments is None:
            segments = self._paths[path] = tuple(s for s in path.split("/") if s)
        message = aiocoap.Message(code=code, transport_tuning=aiocoap.Reliable, uri_path=segments)
        if query:
            message.opt.uri_query = tuple(f"{k}={v}" for k, v in query.items())
        if body is not None:
            message.payload = body
            message.opt.content_format = CONTENT_FORMAT_JSON
        if etag is not None:
            message.opt.etags = (etag,)
        if observe is not None:
            message.opt.observe = observe
        # Resolving "host:port" costs a getaddrinfo per request; the address learnt from the
        # first reply on this socket is reused instead (Uri-Host is never sent: the device is
        # addressed by IP and has no virtual hosts).
        message.remote = endpoint.remote or UndecidedRemote("coap", self._netloc)
        return message

    def _mapped(self, exc: Exception) -> UpstreamError:
        detail = {"uri": self.uri}
        if isinstance(exc, TimeoutError | aiocoap.error.TimeoutError):
            return UpstreamTimeout(
                f"no answer from {self.uri} within {self._timeout:g} s", detail=detail
            )
        if isinstance(exc, aiocoap.error.LibraryShutdown):
            return UpstreamUnavailable(f"the CoAP client for {self.uri} was closed", detail=detail)
        if isinstance(exc, aiocoap.error.NetworkError | OSError):
            # ICMP port/host unreachable arrives as NetworkError caused by ConnectionRefusedError
            # (aiocoap reads the socket's error queue, IP_RECVERR).
            reason = exc.__cause__ or exc
            return UpstreamUnavailable(f"{self.uri} is unreachable: {reason}", detail=detail)
        return UpstreamError(f"CoAP exchange with {self.uri} failed: {exc!r}", detail=detail)


class _Inbox:
    """Every notification, in order, until the consumer takes it (bounded by OBSERVE_BACKLOG).

    aiocoap's `async for` over an observation keeps only the newest notification while the
    consumer is busy ("observe is lossy", aiocoap/protocol.py ClientObservation._Iterator); the
    bridge turns each change into an event, so it keeps them all. Past the bound the observation
    fails with UpstreamError: the caller re-registers and re-reads the full list instead of
    silently missing changes.
    """

    __slots__ = ("_error", "_items", "_wakeup", "registered")

    def __init__(self) -> None:
        self.registered = False
        self._items: collections.deque[CoapReply] = collections.deque()
        self._error: BaseException | None = None
        self._wakeup = asyncio.Event()

    def attach(self, observation: Any) -> None:
        # register_callback is deprecated in favour of the lossy iterator; it is the only way
        # to see every notification, and its first response is not replayed (nothing arrived yet).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            observation.register_callback(self._push)
            observation.register_errback(self._fail)

    def _push(self, response: Any) -> None:
        if len(self._items) >= OBSERVE_BACKLOG:
            self._fail(UpstreamError(f"more than {OBSERVE_BACKLOG} notifications unconsumed"))
            return
        self._items.append(_reply(response))
        self._wakeup.set()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wakeup.set()

    async def get(self) -> CoapReply:
        """The next notification; raises what ended the observation once all are taken."""
        while not self._items:
            if self._error is not None:
                raise self._error
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


async def _shutdown(context: Any) -> None:
    with contextlib.suppress(Exception):
        await context.shutdown()


def _reply(response: Any) -> CoapReply:
    return CoapReply(
        code=_DOTTED[int(response.code)], payload=response.payload, etag=response.opt.etag
    )
