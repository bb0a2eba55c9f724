"""The CoAP client seam: how the bridge talks to a T7470 (RFC 7252, 7641 Observe, 7959 Block2).

`Transmitter` talks to one T7470 at `coap://host:port`; aiocoap carries every packet. Above it
nothing knows CoAP: replies are `CoapReply` (code, payload, ETag), failures `bridge.errors`:

- no answer within `timeout` seconds                 -> UpstreamTimeout
- the network says unreachable/refused (ICMP), etc.  -> UpstreamUnavailable
- an RST, a broken block-wise transfer, nonsense     -> UpstreamError
- 4.xx/5.xx answers are *not* exceptions: `CoapReply.ok` is False and the body is kept.

One aiocoap client context = one connected UDP socket = one source port = one MID and token
space, on aiocoap's `simple6` transport: measured here it costs about a third of the CPU per
request of the default `udp6`, which under uvloop also stops reading after the first ICMP
error (test_coap_messages.py::test_aiocoap_udp6_stops_reading_after_icmp_on_uvloop).

- Requests go one at a time (NSTART=1) over a request context replaced after `rotate_after`
  message IDs (each block of a block-wise answer takes one). aiocoap counts MIDs up per
  context, 16 bits, and they must not be reused within EXCHANGE_LIFETIME (247 s, RFC 7252
  §4.8.2): past ~265 CON/s for four minutes the device would take new requests for
  duplicates of old ones. A fresh context is a fresh MID space, so rotation removes that
  ceiling; requests being serialised, the old context has nothing in flight.
- After any failed exchange (timeout, ICMP, RST, cancellation) the request context is
  discarded: aiocoap would keep retransmitting the CON for up to 45 s and hold every later
  CON back behind it, and a late answer is of no use. The next request starts on a fresh
  context, so a restarted transmitter is reached. Contexts are shut down in the background.
- Each Observe registration gets its own context, shut down when the observation ends, so
  rotation never disturbs an observation and an observation never holds the request lock.
  Every notification is kept, in order (`_Inbox`); one larger than a block is completed on
  that context with GETs of the following blocks, as aiocoap does it (`_whole`).

The device is addressed by the URI's host (resolved by aiocoap once per context); Uri-Host
and Uri-Port are never sent (the device has no virtual hosts).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit

import aiocoap
import aiocoap.error
import msgspec
from aiocoap.message import UndecidedRemote
from aiocoap.numbers import ContentFormat
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.protocol import BlockwiseRequest

from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

_METHODS: Final = {
    "GET": Code.GET,
    "POST": Code.POST,
    "PUT": Code.PUT,
    "DELETE": Code.DELETE,
}
# "2.05" for every code byte, built once: the hot path only looks it up.
_DOTTED: Final = {code: f"{code >> 5}.{code & 0x1F:02d}" for code in range(256)}
_TRANSPORTS: Final = ["simple6"]
# Critical options (RFC 7252 §5.4.1) this client understands in a response; any other one
# rejects the response. aiocoap does not check this over UDP (only CoAP over TCP's signalling
# aborts on one, aiocoap/transports/rfc8323common.py), so the check is made here.
_UNDERSTOOD: Final = frozenset({OptionNumber.BLOCK2, OptionNumber.BLOCK1})
_BLOCK: Final = 1024  # bytes per block (SZX 6), for counting a request body's blocks
# A block-wise body larger than this is refused (10,000 sessions are ~2.3 MB).
_MAX_BODY: Final = 16 * 1024 * 1024
# The device pings observers every 30 s; three missed pings mean the observation is gone
# (a device that restarted forgets its observers without telling anyone).
OBSERVE_IDLE: Final = 100.0
# Notifications received but not yet consumed; past this the observation is failed (_Inbox).
OBSERVE_BACKLOG: Final = 1000


class CoapReply(msgspec.Struct, frozen=True):
    """One response from the device, as the bridge sees it."""

    code: str  # dotted, e.g. "2.05", "4.04"
    payload: bytes
    etag: bytes | None = None
    # The Observe option's value: set on a registration's answer when the device registered
    # us (RFC 7641 §4.1: a plain 2.05 without it means it did not) and on notifications.
    observe: int | None = None

    @property
    def ok(self) -> bool:
        """True for 2.xx (success) codes."""
        return self.code.startswith("2.")


class _Endpoint:
    """One aiocoap client context and how many message IDs it has used."""

    __slots__ = ("context", "retired", "used")

    def __init__(self, context: Any) -> None:
        self.context = context
        self.used = 0
        self.retired = False


class Transmitter:
    """Client for one T7470 at `uri` (coap://host:port). The constructor does no I/O."""

    def __init__(self, uri: str, *, timeout: float, rotate_after: int = 30000) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "coap" or not parts.hostname:
            raise ValueError(f"expected coap://host[:port], got {uri!r}")
        self.uri = uri
        self._remote = UndecidedRemote("coap", parts.netloc.rpartition("@")[2])
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
        """How many client contexts (UDP sockets) have been created so far."""
        return self._created

    async def start(self) -> None:
        """Create the first request context, so the first command pays less set-up cost."""
        async with self._lock:
            if self._current is None:
                self._current = await self._new_endpoint()

    async def close(self) -> None:
        """Shut every context down. Observations still running end with UpstreamUnavailable."""
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
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._exchange(code, path, query, body, etag)
            except Exception as exc:
                raise self._mapped(exc) from exc
            return self._reply(response)

    async def _exchange(
        self,
        code: Code,
        path: str,
        query: Mapping[str, str | int] | None,
        body: bytes | None,
        etag: bytes | None,
    ) -> Any:
        """The whole (block-wise reassembled) response, on the current or a fresh context.

        A GET whose representation changed between blocks is read again once, from block 0.
        """
        restartable = code == Code.GET
        while True:
            endpoint = self._current
            if endpoint is None or endpoint.used >= self._rotate_after:
                if endpoint is not None:
                    self._retire(endpoint)
                endpoint = self._current = await self._new_endpoint()
            endpoint.used += 1 + len(body or b"") // _BLOCK
            message = self._message(code, path, query, body, etag)
            try:
                if len(message.payload) > _BLOCK:  # a body that needs Block1 (RFC 7959 §2.5)
                    response = await endpoint.context.request(message).response
                else:  # one task less per request than aiocoap's block-wise wrapper
                    exchange = endpoint.context.request(message, handle_blockwise=False)
                    response = await _whole(endpoint, message, await exchange.response)
            except BaseException as exc:
                # Whatever went wrong, this context may still be retransmitting: drop it.
                self._current = None
                self._retire(endpoint)
                if restartable and isinstance(exc, aiocoap.error.ResourceChanged):
                    restartable = False
                    continue
                raise
            # aiocoap leaves the last block's Block2 option on the reassembled answer: its
            # number is how many more exchanges (message IDs) the answer took.
            block2 = response.opt.block2
            if block2 is not None:
                endpoint.used += block2.block_number
            return response

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

        When the consumer stops, the observation is deregistered (see `_deregister`) and its
        context shut down.
        """
        endpoint = await self._new_endpoint()
        self._observing.add(endpoint)
        inbox = _Inbox(OBSERVE_BACKLOG)
        message = self._message(Code.GET, path, query, None, None, observe=0)
        request: Any = None
        registered = False
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    request = endpoint.context.request(message, handle_blockwise=False)
                    inbox.attach(request.observation)
                    first = await request.response
                    registered = first.opt.observe is not None
                    first = await _whole(endpoint, message, first)
            except Exception as exc:
                raise self._mapped(exc) from exc
            reply = self._reply(first)
            yield reply
            while registered and reply.ok:
                note = await self._next(endpoint, message, inbox, idle, path)
                if note is None:
                    return
                reply = self._reply(note)
                yield reply
        finally:
            if request is not None and not request.observation.cancelled:
                request.observation.cancel()
                if registered and not endpoint.retired:
                    _deregister(endpoint, message)
            self._retire(endpoint)

    # -- internals -------------------------------------------------------------------------

    async def _next(
        self, endpoint: _Endpoint, registration: Any, inbox: _Inbox, idle: float, path: str
    ) -> Any:
        """The next notification (whole), or None when the device ended the observation."""
        try:
            async with asyncio.timeout(idle):
                note = await inbox.get()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no notification from {self.uri} for {idle:g} s", detail={"path": path}
            ) from exc
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._mapped(exc) from exc
        if note is None or note.opt.block2 is None:
            return note
        try:
            async with asyncio.timeout(self._timeout):
                return await _whole(endpoint, registration, note)
        except Exception as exc:
            raise self._mapped(exc) from exc

    async def _new_endpoint(self) -> _Endpoint:
        # No socket yet: simple6 opens (and connects) it on the first request.
        context = await aiocoap.Context.create_client_context(transports=_TRANSPORTS)
        self._created += 1
        return _Endpoint(context)

    def _retire(self, endpoint: _Endpoint) -> None:
        """Shut the context down in the background (it may be mid-callback), once."""
        self._observing.discard(endpoint)
        if endpoint.retired:
            return
        endpoint.retired = True
        task = asyncio.get_running_loop().create_task(_shutdown(endpoint.context))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _message(
        self,
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
            message.opt.content_format = ContentFormat.JSON
        if etag is not None:
            message.opt.etags = (etag,)
        if observe is not None:
            message.opt.observe = observe
        message.remote = self._remote
        return message

    def _reply(self, response: Any) -> CoapReply:
        """The bridge's view of a whole response; one with an unknown critical option is refused."""
        for option in response.opt.option_list():
            number = option.number
            if number & 1 and number not in _UNDERSTOOD:
                raise UpstreamError(
                    f"{self.uri} answered with the unknown critical option {int(number)}",
                    detail={"uri": self.uri, "option": int(number)},
                )
        return CoapReply(
            _DOTTED[int(response.code)], response.payload, response.opt.etag, response.opt.observe
        )

    def _mapped(self, exc: Exception) -> UpstreamError:
        detail = {"uri": self.uri}
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, TimeoutError | aiocoap.error.TimeoutError):
            return UpstreamTimeout(
                f"no answer from {self.uri} within {self._timeout:g} s", detail=detail
            )
        if isinstance(exc, aiocoap.error.LibraryShutdown):
            return UpstreamUnavailable(f"the CoAP client for {self.uri} was closed", detail=detail)
        if isinstance(exc, aiocoap.error.MessageError):
            return UpstreamError(f"{self.uri} rejected the request (RST)", detail=detail)
        if isinstance(exc, aiocoap.error.ResourceChanged):
            return UpstreamError(f"block-wise answer from {self.uri} changed midway", detail=detail)
        if isinstance(exc, aiocoap.error.NetworkError | OSError):
            # ICMP port/host unreachable arrives as a NetworkError caused by the socket's
            # ConnectionRefusedError (simple6 uses connected sockets, so the OS reports it).
            reason = exc.__cause__ or exc
            return UpstreamUnavailable(f"{self.uri} is unreachable: {reason}", detail=detail)
        return UpstreamError(f"CoAP exchange with {self.uri} failed: {exc!r}", detail=detail)


class _Inbox:
    """Every notification, in order, until the consumer takes it (bounded by `limit`).

    aiocoap's `async for` over an observation keeps only the newest notification while the
    consumer is busy (aiocoap 0.4.17, aiocoap/protocol.py, ClientObservation._Iterator.push:
    "this is a lossy queue as observe is lossy"); the bridge turns each change into an event,
    so it keeps them all, through the callbacks that iterator itself is built on. Past the
    bound the observation fails with UpstreamError: the caller re-registers and re-reads the
    full list instead of silently missing changes.
    """

    __slots__ = ("_ended", "_error", "_items", "_limit", "_wakeup")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: collections.deque[Any] = collections.deque()
        self._error: BaseException | None = None
        self._ended = False
        self._wakeup = asyncio.Event()

    def attach(self, observation: Any) -> None:
        # register_callback/register_errback are deprecated in aiocoap 0.4 in favour of the
        # lossy iterator above; they are the only way to see every notification.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "register_", DeprecationWarning)
            observation.register_callback(self._push)
            observation.register_errback(self._fail)

    def _push(self, response: Any) -> None:
        if self._ended or self._error is not None:
            return
        if len(self._items) >= self._limit:
            self._error = UpstreamError(f"more than {self._limit} notifications unconsumed")
        else:
            self._items.append(response)
        self._wakeup.set()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, aiocoap.error.NotObservable | aiocoap.error.ObservationCancelled):
            self._ended = True  # the device ended it: a clean end after the last notification
        elif self._error is None:
            self._error = exc
        self._wakeup.set()

    async def get(self) -> Any:
        """The next notification, None once the device ended the observation, else raises."""
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


class _Body(bytearray):
    """A block-wise answer's body while aiocoap appends the blocks to it, capped at _MAX_BODY.

    aiocoap reassembles with `payload += block` (aiocoap/message.py,
    Message._append_response_block): on `bytes` that copies the whole body for every block,
    quadratic in the blocks (10,000 sessions, 2.3 MB: 0.8-2.5 s of CPU); a bytearray grows in
    place. aiocoap sets no bound on the size either; this one stops at _MAX_BODY.
    """

    __slots__ = ()

    # bytearray takes any buffer here, narrower than MutableSequence's Iterable[int] (typeshed
    # itself silences the same complaint on bytearray).
    def __iadd__(self, block: ReadableBuffer) -> Self:  # type: ignore[override]
        if len(self) + memoryview(block).nbytes > _MAX_BODY:
            raise UpstreamError(f"block-wise answer larger than {_MAX_BODY} bytes")
        return super().__iadd__(block)


async def _whole(endpoint: _Endpoint, request: Any, response: Any) -> Any:
    """`response` completed by requests for its following blocks (RFC 7959 §2.4), with the
    routine aiocoap's own block-wise requests and observations use
    (BlockwiseRequest._complete_by_requesting_block2: `request` again, without Observe, with
    Block2 1, 2, ... on the same socket; an ETag change midway raises ResourceChanged)."""
    block2 = response.opt.block2
    if block2 is None or not block2.more:
        return response
    response.payload = _Body(response.payload)
    whole = await BlockwiseRequest._complete_by_requesting_block2(  # noqa: SLF001
        endpoint.context, request, response, endpoint.context.log
    )
    whole.payload = bytes(whole.payload)
    return whole


def _deregister(endpoint: _Endpoint, registration: Any) -> None:
    """Send the GET with Observe: 1 and the observation's token (RFC 7641 §3.6), unconfirmed.

    aiocoap 0.4 cannot cancel an observation on the wire (its own comment in
    ClientObservation's driver, aiocoap/protocol.py Request._run, points to chrysn/aiocoap#92),
    and a request's token is always the library's own choice, so this one message goes
    straight to the context's message layer, which encodes and sends it. A device that misses
    it meets a closed port (ICMP) with its next notification and forgets us then.
    """
    message = registration.copy(observe=1, mid=None, mtype=aiocoap.NON)  # same token and peer
    with contextlib.suppress(Exception):  # best effort: the context is going away anyway
        endpoint.context.request_interfaces[0].token_interface.send_message(message, None)


async def _shutdown(context: Any) -> None:
    """Close the context's socket, then shut the context down.

    aiocoap 0.4.17 unhooks its message layer before it closes the socket
    (aiocoap/transports/generic_udp.py, GenericMessageInterface.shutdown sets `_mman = None`;
    simple6 aborts the socket in a later task): a datagram read in between raises
    AttributeError in the event loop's reader callback, logged as an error with a traceback.
    With the socket closed first there is nothing left to read.
    """
    with contextlib.suppress(AttributeError):  # another aiocoap: its own shutdown only
        for interface in context.request_interfaces:
            pool = interface.token_interface.message_interface._pool  # noqa: SLF001
            for connection in pool._sockets.values():  # noqa: SLF001
                connection._transport.abort()  # noqa: SLF001
    with contextlib.suppress(Exception):
        await context.shutdown()
