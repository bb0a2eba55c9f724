"""An LRS T7470 transmitter simulator over real CoAP/UDP (an aiocoap server).

Resources (PRODUCT.md; the rules live in `bridge.sim.pager_device`, the handlers in
`bridge.sim.pager_resources`):

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
Content-Format 50. Notifications are confirmable (a client that does not ACK is dropped by
aiocoap, as on the device): `{"responseTypes":["sessions","statistics"],...,"sessions":[...]}`
for session changes, `["settings"]` for settings, and `["ping"]` every `ping_interval` seconds.

Fault controls: `latency` (seconds before each answer), `set_silent()` (the port stays bound but
nothing answers, not even with an ACK or ICMP), `observe=False` (/v1/notify answers 4.04).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any, Final

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code

from bridge import t7470
from bridge.sim.pager_device import DeviceError, PagerDevice
from bridge.sim.pager_resources import (
    DeviceResources,
    Handler,
    Received,
    error,
    notify_action,
    reply,
)

log = logging.getLogger(__name__)

_MAX_PORTS: Final = 4096


class _Route(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """One path; `handle` dispatches on the method itself."""

    def __init__(self, handle: Handler) -> None:
        super().__init__()
        self._handle = handle

    async def render(self, request: Any) -> Any:
        return await self._handle(request)


class _Notify(aiocoap.resource.Resource):  # type: ignore[misc]
    """/v1/notify: answers through the pipe itself, so every change is sent, in order.

    aiocoap's ObservableResource keeps only the latest pending state (lossy, as RFC 7641
    allows); a bridge that republishes each change as an event wants every one of them.
    """

    def __init__(self, sim: PagerSimulator) -> None:
        super().__init__()
        self._sim = sim

    async def render_to_pipe(self, pipe: Any) -> None:
        await self._sim.observe_pipe(pipe)


class _Observer:
    __slots__ = ("pipe", "sequence", "task")

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.sequence = 0
        self.task = asyncio.current_task()

    def send(self, payload: bytes) -> None:
        self.sequence = (self.sequence + 1) & 0xFFFFFF  # the Observe option holds 24 bits
        message = aiocoap.Message(
            code=Code.CONTENT,
            # Confirmable, so a client that is gone is noticed (and dropped) by aiocoap.
            transport_tuning=aiocoap.Reliable,
            payload=payload,
            content_format=t7470.CONTENT_FORMAT_JSON,
            observe=self.sequence,
        )
        self.pipe.add_response(message, is_last=False)


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
        self.latency = latency
        self.observe = observe
        self.device = PagerDevice(max_number=max_number, history_limit=history_limit)
        # Commands carrying a number, in arrival order (for ordering tests).
        self.received: collections.deque[Received] = collections.deque(maxlen=10_000)
        # Client source ports seen (one per client endpoint: rotation shows up here).
        self.client_ports: dict[int, None] = {}
        self._observers: set[_Observer] = set()
        self._context: Any = None
        self._blackhole: asyncio.DatagramTransport | None = None
        self._silent = False
        self._pinger: asyncio.Task[None] | None = None
        resources = DeviceResources(self.device, self._changed, self._broadcast, self.received)
        self._site = aiocoap.resource.Site()
        for path, handle in resources.routes():
            self._site.add_resource(path, _Route(self._answering(handle)))
        self._site.add_resource(("v1", "notify"), _Notify(self))

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
        return len(self._observers)

    @property
    def silent(self) -> bool:
        return self._silent

    async def start(self) -> None:
        if self._port == 0:
            self._port = _free_udp_port(self.host)
        await (self._open_blackhole() if self._silent else self._open_server())
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
        """Silent: the port stays bound but swallows every datagram (no ACK, no ICMP)."""
        if silent == self._silent:
            return
        self._silent = silent
        if self._context is None and self._blackhole is None:
            return  # not started: applies at start()
        if silent:
            await self._close_server()
            await self._open_blackhole()
        else:
            if self._blackhole is not None:
                self._blackhole.close()
                self._blackhole = None
            await self._open_server()

    async def _open_server(self) -> None:
        self._context = await aiocoap.Context.create_server_context(
            self._site, bind=(self.host, self._port), transports=["udp6"]
        )

    async def _close_server(self) -> None:
        for observer in list(self._observers):
            if observer.task is not None:
                observer.task.cancel()
        self._observers.clear()
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    async def _open_blackhole(self) -> None:
        loop = asyncio.get_running_loop()
        self._blackhole, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(self.host, self._port)
        )

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
        if self._observers and sessions:
            envelope = self.device.envelope(
                ["sessions", "statistics"], sessions=sessions, statistics=self.device.statistics()
            )
            self._broadcast(t7470.encode(envelope))
        return sessions

    def _broadcast(self, payload: bytes) -> None:
        for observer in list(self._observers):
            try:
                observer.send(payload)
            except TypeError:
                # aiocoap's pipe raises this once the observer's interest has ended but before
                # its render task was cancelled: the client is gone, forget it.
                self._observers.discard(observer)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self._observers:
                self._broadcast(t7470.encode(self.device.envelope(["ping"])))

    async def observe_pipe(self, pipe: Any) -> None:
        """Serve one request on /v1/notify; an Observe registration lasts until cancelled."""
        request = pipe.request
        self._seen(request)
        await self._delay()
        try:
            action = notify_action(request, observable=self.observe)
        except DeviceError as exc:
            pipe.add_response(error(exc), is_last=True)
            return
        if action == "get_sessions":
            envelope = self.device.envelope(
                ["sessions", "statistics"],
                sessions=self.device.sessions(),
                statistics=self.device.statistics(),
            )
        else:
            envelope = self.device.envelope(["ping"])
        first = reply("2.05", envelope)
        if request.opt.observe != 0:
            pipe.add_response(first, is_last=True)
            return
        observer = _Observer(pipe)
        self._observers.add(observer)
        try:
            first.opt.observe = 0
            pipe.add_response(first, is_last=False)
            # aiocoap cancels this task when the client deregisters, RSTs or stops ACKing.
            await asyncio.Event().wait()
        finally:
            self._observers.discard(observer)

    # -- request handling ------------------------------------------------------------------

    def _answering(self, handle: Handler) -> Handler:
        async def answer(request: Any) -> Any:
            self._seen(request)
            await self._delay()
            try:
                return await handle(request)
            except DeviceError as exc:
                return error(exc)

        return answer

    def _seen(self, request: Any) -> None:
        if len(self.client_ports) < _MAX_PORTS:
            port = request.remote.hostinfo.rpartition(":")[2]
            if port.isdigit():
                self.client_ports[int(port)] = None

    async def _delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)


def _free_udp_port(host: str) -> int:
    # aiocoap's udp6 transport does not report the port it bound, so port 0 is resolved here.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def serve(
    host: str = "127.0.0.1",
    port: int = 5683,
    max_number: int = 999,
    ping_interval: float = 30.0,
    latency: float = 0.0,
) -> None:
    """Run a simulator until this task is cancelled (`iotbridge sim pager`, the demo)."""
    sim = PagerSimulator(
        host=host, port=port, max_number=max_number, ping_interval=ping_interval, latency=latency
    )
    await sim.start()
    log.info("T7470 simulator listening on %s", sim.uri)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m bridge.sim.pager [--host --port --max-number --ping-interval --latency]`."""
    parser = argparse.ArgumentParser(prog="iotbridge sim pager", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument("--max-number", type=int, default=999)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    coro = serve(args.host, args.port, args.max_number, args.ping_interval, args.latency)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
