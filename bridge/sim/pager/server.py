"""An LRS T7470 transmitter simulator over real CoAP/UDP, served by aiocoap.

Resources (as LRS documents the T7470's CoAP API, v1.2; the rules live in
`bridge.sim.pager.device`, the handlers in
`bridge.sim.pager.resources`):

    POST   /v1/sessions                 create (2.01)
    PUT    /v1/sessions?number=N        update, action page|clear|remove (2.04)
    DELETE /v1/sessions?number=N        remove one (2.02);  DELETE /v1/sessions: clear all (2.02)
    GET    /v1/sessions[?number=N]      sessions + statistics, ETag / 2.03 Valid on the full list
    GET|DELETE /v1/sessions/history     DELETE answers 2.02 without a body
    GET|DELETE /v1/sessions/statistics  DELETE resets them and answers the fresh statistics
    POST   /v1/page                     standalone page (2.04, no body)
    GET|POST /v1/settings
    GET    /v1/notify[?action=get_sessions]  Observe: session/settings changes and pings

Errors answer `{"error": "<why>"}` (Content-Format 50): 4.00 for a body that is not compact or
not valid, a number out of range, a duplicate session or an unknown action; 4.04 for a number
without an active session; 4.05 for a method a resource lacks; 4.15 for a body without
Content-Format 50. Notifications are confirmable, every one delivered in order (a client that
does not ACK, or answers with an RST, is dropped, as on the device):
`{"responseTypes":["sessions","statistics"],...,"sessions":[...]}` for session changes,
`["settings"]` for settings, and `["ping"]` every `ping_interval` seconds. Bodies over 1024
bytes (a long session list) go block-wise (RFC 7959).

aiocoap carries every packet: an `aiocoap.resource.Site` of thin `Resource` adapters over the
plain handlers, on a server context with the `udp6` transport on asyncio's loop and
`simplesocketserver` on uvloop (see `transport_for_loop`). What the library does here:
message ids and deduplication (a retransmitted CON is answered from its cache, never processed
twice), piggybacked and separate responses (an answer not ready within EMPTY_ACK_DELAY, 0.1 s,
goes as a confirmable separate response after an empty ACK), retransmission of our CONs, Block1
and Block2 (a body is rendered once and its later blocks served from `Block2Cache`), the end of
an observation on an RST, on exhausted retransmissions or on an ICMP error (udp6 only).

What it does not do, and this module does (/v1/notify):

- Every notification, in order. `ObservableResource.updated_state()` keeps only the latest state
  while a notification is outstanding (RFC 7641 allows it); the bridge republishes each change
  as an event, so /v1/notify answers through its pipe itself (`render_to_pipe`): each
  notification is a new response on the observation's pipe, and aiocoap's per-remote queue
  (NSTART 1) sends them one after the other, each acknowledged before the next.
- Block-wise notifications. aiocoap's observation path sends a response as it is, however large;
  here block 0 goes out with the Observe option and the rest is kept in the resource's
  `Block2Cache` for the client's follow-up GETs (RFC 7959 §3.4). The next notification waits
  until the last block was fetched (or HOLD_LIMIT), so a client never finds a newer body under
  the blocks it is still collecting.

And for every resource: a critical option the simulator does not act on is refused (4.02, or
5.05 for Proxy-Uri/Proxy-Scheme, RFC 7252 §5.4.1, §5.7.2), which aiocoap's server would pass
through; and `serve` bounds aiocoap's duplicate cache in time (SERVE_MAX_LATENCY).

Fault controls: `latency` (seconds before each answer: past 0.1 s a confirmable request gets an
empty ACK and the answer separately), `set_silent()` (the port stays bound but nothing answers,
not even with an ACK or ICMP), `observe=False` (/v1/notify answers 4.04), `stop()` (the port is
closed: clients get ICMP port unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiocoap
import aiocoap.resource
from aiocoap.blockwise import Block2Cache
from aiocoap.error import BadOption, ProxyingNotSupported
from aiocoap.numbers import ContentFormat
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.util import hostportsplit

from bridge.contract import t7470
from bridge.sim.pager.device import DeviceError, PagerDevice
from bridge.sim.pager.resources import (
    DeviceResources,
    Handler,
    Received,
    Request,
    Response,
    error,
    notify_action,
)

log = logging.getLogger(__name__)

COAP_PORT: Final = 5683
BLOCK_SIZE: Final = 1024  # aiocoap's largest payload over UDP; larger bodies go block-wise
BACKLOG: Final = 10_000  # notifications one observer may have waiting behind a block-wise one
HOLD_LIMIT: Final = 30.0  # seconds a block-wise notification may take to be fetched
_MAX_PORTS: Final = 4096
# aiocoap keeps every answer for duplicate detection for EXCHANGE_LIFETIME, with no bound on
# their number: 247 s with RFC 7252's MAX_LATENCY of 100 s, at 3-4 KB an answer (measured), so
# a simulator answering 1,000 requests a second would hold about 1 GB. A process that only
# serves simulators (`serve`) takes the latency of a loopback or LAN instead (RFC 7252 §4.8.2
# leaves MAX_LATENCY to the network): EXCHANGE_LIFETIME is then 49 s, still longer than a
# client retransmits (45 s); at 2,400 requests a second such a process levels off at 420 MB.
SERVE_MAX_LATENCY: Final = 1.0
# The critical options the resources act on (RFC 7252 §5.4.1: any other is refused with 4.02).
_UNDERSTOOD: Final = frozenset(
    (
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.ACCEPT,
        OptionNumber.BLOCK1,
        OptionNumber.BLOCK2,
    )
)
_PROXYING: Final = frozenset((OptionNumber.PROXY_URI, OptionNumber.PROXY_SCHEME))


class PagerSimulator:
    """A T7470 on `host:port` (port 0 picks a free one at `start()`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 5683,
        max_number: int = 999,
        ping_interval: float = 30.0,
        latency: float = 0.0,
        observe: bool = True,
        history_limit: int = 1000,
    ) -> None:
        self.host = host
        self._port = port
        self.ping_interval = ping_interval
        self._latency = latency
        self.observe = observe
        self.device = PagerDevice(max_number=max_number, history_limit=history_limit)
        # Commands carrying a number, in arrival order (for ordering tests).
        self.received: collections.deque[Received] = collections.deque(maxlen=10_000)
        # Client source ports seen (one per client endpoint: rotation shows up here).
        self.client_ports: dict[int, None] = {}
        self._resources = DeviceResources(self.device, self._broadcast, self.received)
        self._etags = itertools.count(1)
        self._context: Any = None  # the aiocoap server context while serving
        self._notify: _Notify | None = None
        self._blackhole: socket.socket | None = None  # holds the port while silent
        self._silent = False
        self._pinger: asyncio.Task[None] | None = None

    # -- lifecycle and fault controls ------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def uri(self) -> str:
        return f"coap://{self.host}:{self._port}"

    @property
    def observers(self) -> int:
        """Observations currently registered on /v1/notify."""
        return 0 if self._notify is None else len(self._notify.observers)

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def latency(self) -> float:
        """Seconds before each answer (read when a request arrives)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = seconds

    async def start(self) -> None:
        # The port is held by a socket of our own (SO_REUSEPORT, as aiocoap's udp6 binds) until
        # aiocoap has bound it too: port 0 is resolved without a window for anyone else.
        holder = hold_port(self.host, self._port)
        try:
            self._port = holder.getsockname()[1]
            if self._silent:
                self._blackhole = holder
            else:
                await self._open_server()
                holder.close()
        except BaseException:
            holder.close()
            raise
        self._pinger = asyncio.create_task(self._ping_loop(), name="pager-sim-ping")

    async def stop(self) -> None:
        """Close the port. Observers are forgotten without a word, as on a power cut."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        await self._close_server()
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None

    async def set_silent(self, silent: bool) -> None:
        """Silent: the port stays bound but swallows every datagram (no ACK, no ICMP).

        Going silent forgets the observers and every answer still pending, as a device that
        hung would; it comes back with no observers. Silence is a socket bound to the port that
        nobody reads (the kernel drops what overflows its buffer); it binds (SO_REUSEPORT)
        before aiocoap's socket closes, and the other way round, so the port is never unbound
        in between (no ICMP, and nobody else can take it).
        """
        if silent == self._silent:
            return
        self._silent = silent
        if self._context is None and self._blackhole is None:
            return  # not started: applies at start()
        if silent:
            self._blackhole = hold_port(self.host, self._port)
            await self._close_server()
        else:
            await self._open_server()
            if self._blackhole is not None:
                self._blackhole.close()
                self._blackhole = None

    async def _open_server(self) -> None:
        """Serve on a fresh site (no caches or observers from before)."""
        site = aiocoap.resource.Site()
        for path, handle in self._resources.routes():
            site.add_resource(path, _Route(self, handle))
        self._notify = _Notify(self)
        site.add_resource(("v1", "notify"), self._notify)
        self._context = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self._port), transports=[transport_for_loop()]
        )

    async def _close_server(self) -> None:
        """Stop serving: observers, pending answers and retransmissions end without a word."""
        if self._notify is not None:
            self._notify.forget()
            self._notify = None
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()

    # -- the restaurant's own console: changes that observers hear about -------------------

    def console_create(
        self,
        number: int,
        *,
        goal: int | None = None,
        label: str | None = None,
        party_size: int | None = None,
        page: bool = False,
    ) -> t7470.Session:
        body = t7470.CreateSession(
            number=number,
            goal=goal,
            label=label,
            partySize=party_size,
            action="page" if page else None,
        )
        return self._changed(self.device.create(body))[0]

    def console_page(self, number: int, page_mode: str | None = None) -> t7470.Session:
        return self._changed(self.device.page_session(number, page_mode))[0]

    def console_clear(self, number: int) -> t7470.Session:
        return self._changed(self.device.clear(number))[0]

    def console_remove(self, number: int) -> t7470.Session:
        return self._changed(self.device.delete(number))[0]

    # -- notifications ---------------------------------------------------------------------

    def _changed(self, sessions: list[t7470.Session]) -> list[t7470.Session]:
        """Tell every observer about changed sessions; returns them for the caller's reply."""
        if self.observers and sessions:
            envelope = self.device.envelope(
                ["sessions", "statistics"], sessions=sessions, statistics=self.device.statistics()
            )
            self._broadcast(t7470.encode(envelope))
        return sessions

    def _broadcast(self, payload: bytes) -> None:
        if self._notify is not None and self._notify.observers:
            self._notify.broadcast(payload, self.etag_for(payload))

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.observers:
                self._broadcast(t7470.encode(self.device.envelope(["ping"])))

    def notify_body(self, action: str | None) -> bytes:
        """/v1/notify's own answer: the full list (action=get_sessions) or a ping."""
        if action == "get_sessions":
            envelope = self.device.envelope(
                ["sessions", "statistics"],
                sessions=self.device.sessions(),
                statistics=self.device.statistics(),
            )
        else:
            envelope = self.device.envelope(["ping"])
        return t7470.encode(envelope)

    # -- request handling (called by the resources) ----------------------------------------

    async def arrived(self, message: Any) -> None:
        """Every request: refuse options we cannot honour, note the client's port, then wait
        `latency` seconds."""
        _check_options(message)
        if len(self.client_ports) < _MAX_PORTS:
            self.client_ports[_port_of(message.remote)] = None
        if self._latency > 0:
            await asyncio.sleep(self._latency)

    def handle(self, handle: Handler, message: Any) -> Any:
        """Run a plain handler on `message`; returns the answer as an `aiocoap.Message`."""
        try:
            response = handle(request_of(message))
        except DeviceError as exc:
            response = error(exc)
        return self.message_of(response)

    def message_of(self, response: Response) -> Any:
        message = aiocoap.Message(code=response.code, payload=response.payload)
        if response.content_format is not None:
            message.opt.content_format = response.content_format
        etag = response.etag or self.etag_for(response.payload)
        if etag is not None:
            message.opt.etag = etag
        return message

    def etag_for(self, payload: bytes) -> bytes | None:
        """A fresh ETag for a body that goes block-wise, so a client can tell the blocks of
        one body from another's (RFC 7959 §2.4)."""
        if len(payload) <= BLOCK_SIZE:
            return None
        return next(self._etags).to_bytes(4, "big")


def request_of(message: Any) -> Request:
    """The plain `Request` a handler sees, read from an incoming `aiocoap.Message`."""
    content_format = message.opt.content_format
    return Request(
        code=message.code,
        query=tuple(message.opt.uri_query),
        payload=message.payload,
        content_format=None if content_format is None else int(content_format),
        etags=tuple(message.opt.etags),
    )


class _Route(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """One path. aiocoap assembles Block1 and cuts Block2 around `render` (the body is rendered
    once and its later blocks served from the cache); `render` hands every method to the plain
    handler, which answers 4.05 itself for the ones its resource lacks."""

    def __init__(self, sim: PagerSimulator, handle: Handler) -> None:
        super().__init__()
        self._sim = sim
        self._handle = handle

    async def render(self, request: Any) -> Any:
        await self._sim.arrived(request)
        return self._sim.handle(self._handle, request)


class _Observer:
    """One observation of /v1/notify, alive while aiocoap keeps its pipe (and our task) going."""

    __slots__ = ("_wake", "fetched", "key", "pending", "pipe", "sequence")

    def __init__(self, pipe: Any, key: object) -> None:
        self.pipe = pipe
        self.key = key
        self.sequence = 0  # the Observe option: 0 on the registration's answer, then 1, 2, ...
        self.pending: collections.deque[tuple[bytes, bytes | None]] = collections.deque()
        self.fetched = asyncio.Event()  # the last block of a block-wise notification went out
        self._wake = asyncio.Event()

    def push(self, payload: bytes, etag: bytes | None) -> bool:
        """Queue a notification; False when the backlog is full."""
        if len(self.pending) >= BACKLOG:
            return False
        self.pending.append((payload, etag))
        self._wake.set()
        return True

    async def next(self) -> tuple[bytes, bytes | None]:
        while not self.pending:
            self._wake.clear()
            await self._wake.wait()
        return self.pending.popleft()


class _Notify(aiocoap.resource.Resource):  # type: ignore[misc]
    """/v1/notify, answered through the pipe itself so that no notification is lost.

    An Observe registration's `render_to_pipe` runs as long as the observation: it sends the
    first answer, then each queued notification as a new response on the pipe (a confirmable
    one: aiocoap retransmits it, and ends the observation, cancelling this task, when the client
    answers with an RST, never ACKs, is unreachable or registers anew with the same token).
    """

    def __init__(self, sim: PagerSimulator) -> None:
        super().__init__()
        self._sim = sim
        self.observers: dict[_Observer, None] = {}
        self._waiting: dict[object, _Observer] = {}  # block-wise notifications being fetched
        self._blocks = Block2Cache()

    def forget(self) -> None:
        self.observers.clear()
        self._waiting.clear()

    def broadcast(self, payload: bytes, etag: bytes | None) -> None:
        for observer in list(self.observers):
            if not observer.push(payload, etag):
                # Too far behind: end the observation with 5.03 (RFC 7641 §3.2 lets a client
                # register again and read the full list).
                self.observers.pop(observer, None)
                ended = aiocoap.Message(code=Code.SERVICE_UNAVAILABLE)
                observer.pipe.add_response(ended, is_last=True)

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        sim = self._sim
        await sim.arrived(request)
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            # A later block of an answer or notification: from the cache, or 4.08.
            answer = await self._blocks.extract_or_insert(request, _nothing)
            if not answer.opt.block2.more:
                self._fetched(request)
            pipe.add_response(answer, is_last=True)
            return
        try:
            action = notify_action(request_of(request), observable=sim.observe)
        except DeviceError as exc:
            pipe.add_response(sim.message_of(error(exc)), is_last=True)
            return
        body = sim.notify_body(action)
        answer = await self._cut(request, body, sim.etag_for(body))
        if request.opt.observe != 0:
            pipe.add_response(answer, is_last=True)
            return
        observer = _Observer(pipe, _block_key(request))
        self.observers[observer] = None
        try:
            await self._serve(observer, answer)
        finally:
            self.observers.pop(observer, None)
            if self._waiting.get(observer.key) is observer:
                del self._waiting[observer.key]

    async def _serve(self, observer: _Observer, answer: Any) -> None:
        """Send `answer`, then every notification queued for `observer`, until cancelled."""
        request = observer.pipe.request
        while True:
            answer.opt.observe = observer.sequence
            block_wise = answer.opt.block2 is not None and answer.opt.block2.more
            if block_wise:
                observer.fetched.clear()
                self._waiting[observer.key] = observer
            observer.pipe.add_response(answer, is_last=False)
            if block_wise:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOLD_LIMIT):
                        await observer.fetched.wait()
            payload, etag = await observer.next()
            answer = await self._cut(request, payload, etag)
            answer.transport_tuning = aiocoap.Reliable()  # confirmable, whatever the request was
            observer.sequence = (observer.sequence + 1) & 0xFFFFFF  # Observe holds 24 bits

    async def _cut(self, request: Any, payload: bytes, etag: bytes | None) -> Any:
        """The answer to `request` carrying `payload`: whole, or its first block (the body is
        kept for the client's requests of the later blocks)."""
        message = aiocoap.Message(
            code=Code.CONTENT, payload=payload, content_format=ContentFormat.JSON
        )
        if etag is not None:
            message.opt.etag = etag
        return await self._blocks.extract_or_insert(request, _ready(message))

    def _fetched(self, request: Any) -> None:
        observer = self._waiting.pop(_block_key(request), None)
        if observer is not None:
            observer.fetched.set()


def _check_options(request: Any) -> None:
    """Refuse a request with a critical option we do not act on: 4.02, or 5.05 for proxying.

    aiocoap 0.4.17's server passes such options through to the resource (an If-Match or an
    unknown option 2049 would be served as if absent, a Proxy-Uri as a local request).
    """
    for option in request.opt.option_list():
        number = option.number
        if number.is_critical() and number not in _UNDERSTOOD:
            if number in _PROXYING:
                raise ProxyingNotSupported("not a proxy")
            raise BadOption(f"unrecognised critical option {int(number)}")


def _port_of(remote: Any) -> int:
    """The client's UDP source port. udp6's and simplesocketserver's remotes carry their socket
    address (0.1 us to read, where `hostinfo` takes 11 us to format and parse the address);
    other transports' remotes go through `hostinfo`."""
    sockaddr = getattr(remote, "sockaddr", None) or getattr(remote, "address", None)
    if isinstance(sockaddr, tuple):
        return int(sockaddr[1])
    return hostportsplit(remote.hostinfo)[1] or COAP_PORT


def _block_key(request: Any) -> object:
    """Which observation a block request continues: the same remote and query."""
    return request.remote.blockwise_key, tuple(request.opt.uri_query)


def _ready(message: Any) -> Callable[[], Awaitable[Any]]:
    async def build() -> Any:
        return message

    return build


async def _nothing() -> Any:
    raise AssertionError("Block2Cache renders only for block 0")  # pragma: no cover


def transport_for_loop() -> str:
    """aiocoap's server transport for the running loop: `udp6` on asyncio's own, else
    `simplesocketserver`.

    udp6 binds one address (IPv4 through a v4-mapped IPv6 socket, port 0 included) and reads
    ICMP errors (IP_RECVERR), so an observer whose socket has closed is dropped at once. It
    polls its socket with `loop.add_reader`: asyncio's selector loop reports a pending error as
    readable and udp6 drains it, but uvloop (libuv's uv_poll) takes the error condition as
    fatal and stops the reader, so the server would never read again after the first ICMP
    error. simplesocketserver rides on the loop's own datagram endpoint, which uvloop runs
    well; it cannot see ICMP errors, so there an observer that has gone is dropped only when a
    notification's retransmissions run out (~45-93 s). (`simple6` is no choice: in a server
    context it opens a client socket, and nothing listens on `bind`.)
    """
    loop = asyncio.get_running_loop()
    return "udp6" if isinstance(loop, asyncio.SelectorEventLoop) else "simplesocketserver"


def hold_port(host: str, port: int) -> socket.socket:
    """A UDP socket bound to `host:port` (0: a free port) as the transport binds it, with
    SO_REUSEPORT (so that both can hold the port at once); nothing reads it."""
    if transport_for_loop() == "udp6":  # IPv6, with IPv4 as v4-mapped addresses
        flags = socket.AI_V4MAPPED
        infos = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, flags)
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    host: str = "127.0.0.1",
    port: int = 5683,
    max_number: int = 999,
    ping_interval: float = 30.0,
    latency: float = 0.0,
    count: int = 1,
) -> None:
    """Run `count` simulators on ports `port`.. until this task is cancelled (`iotbridge sim
    pager`, the demo, the benchmarks' fleets: one process can stand in for many transmitters).

    It sets aiocoap's MAX_LATENCY for the whole process while it runs (SERVE_MAX_LATENCY).
    """
    saved_latency = TransportTuning.MAX_LATENCY
    TransportTuning.MAX_LATENCY = SERVE_MAX_LATENCY
    try:
        await _serve(host, port, max_number, ping_interval, latency, count)
    finally:
        TransportTuning.MAX_LATENCY = saved_latency


async def _serve(
    host: str, port: int, max_number: int, ping_interval: float, latency: float, count: int
) -> None:
    sims = [
        PagerSimulator(
            host=host,
            port=port + i,
            max_number=max_number,
            ping_interval=ping_interval,
            latency=latency,
        )
        for i in range(count)
    ]
    for sim in sims:
        await sim.start()
    if count == 1:
        log.info("T7470 simulator listening on %s", sims[0].uri)
    else:
        log.info(
            "%d T7470 simulators listening on %s to port %d", count, sims[0].uri, port + count - 1
        )
    try:
        await asyncio.Event().wait()
    finally:
        for sim in sims:
            await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m bridge.sim.pager.server [--host --port --max-number --ping-interval
    --latency]`."""
    parser = argparse.ArgumentParser(prog="iotbridge sim pager", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument("--max-number", type=int, default=999)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=1, help="simulators on consecutive ports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    coro = serve(
        args.host, args.port, args.max_number, args.ping_interval, args.latency, args.count
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
