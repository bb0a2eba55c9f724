"""An LRS T7470 transmitter simulator over real CoAP/UDP (on `bridge.sim.coap_server`).

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
Content-Format 50. Notifications are confirmable, every one delivered in order (a client that
does not ACK, or answers with an RST, is dropped, as on the device):
`{"responseTypes":["sessions","statistics"],...,"sessions":[...]}` for session changes,
`["settings"]` for settings, and `["ping"]` every `ping_interval` seconds. Bodies over 1024
bytes (a long session list) go block-wise (RFC 7959).

Fault controls: `latency` (seconds before each answer; a confirmable request is acknowledged at
once and answered separately), `set_silent()` (the port stays bound but nothing answers, not
even with an ACK or ICMP), `observe=False` (/v1/notify answers 4.04).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
from typing import Final

from bridge import t7470
from bridge.coapwire import CONTENT
from bridge.sim.coap_request import Handler, Request, Response
from bridge.sim.coap_server import CoapServer
from bridge.sim.pager_device import DeviceError, PagerDevice
from bridge.sim.pager_resources import (
    DeviceResources,
    Received,
    error,
    notify_action,
    reply,
)

log = logging.getLogger(__name__)

_MAX_PORTS: Final = 4096
NOTIFY: Final = ("v1", "notify")


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
        self.observe = observe
        self.device = PagerDevice(max_number=max_number, history_limit=history_limit)
        # Commands carrying a number, in arrival order (for ordering tests).
        self.received: collections.deque[Received] = collections.deque(maxlen=10_000)
        # Client source ports seen (one per client endpoint: rotation shows up here).
        self.client_ports: dict[int, None] = {}
        self._silent = False
        self._pinger: asyncio.Task[None] | None = None
        resources = DeviceResources(self.device, self._broadcast, self.received)
        routes = {path: self._answering(handle) for path, handle in resources.routes()}
        routes[NOTIFY] = self._answering(self._notify)
        self._server = CoapServer(routes, observable=NOTIFY, latency=latency)

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
        return len(self._server.observers)

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def latency(self) -> float:
        """Seconds before each answer (read when a request arrives)."""
        return self._server.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._server.latency = seconds

    async def start(self) -> None:
        self._server.set_silent(self._silent)
        self._port = await self._server.open(self.host, self._port)
        self._pinger = asyncio.create_task(self._ping_loop(), name="pager-sim-ping")

    async def stop(self) -> None:
        """Close the port. Observers are forgotten without a word, as on a power cut."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        self._server.close()

    async def set_silent(self, silent: bool) -> None:
        """Silent: the port stays bound but swallows every datagram (no ACK, no ICMP).

        Going silent forgets the observers and every answer still pending, as a device that
        hung would; it comes back with no observers.
        """
        self._silent = silent
        self._server.set_silent(silent)

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
        if self._server.observers and sessions:
            envelope = self.device.envelope(
                ["sessions", "statistics"], sessions=sessions, statistics=self.device.statistics()
            )
            self._broadcast(t7470.encode(envelope))
        return sessions

    def _broadcast(self, payload: bytes) -> None:
        if self._server.observers:
            self._server.notify(payload, t7470.CONTENT_FORMAT_JSON)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self._server.observers:
                self._broadcast(t7470.encode(self.device.envelope(["ping"])))

    # -- request handling ------------------------------------------------------------------

    def _notify(self, request: Request) -> Response:
        """/v1/notify: the full list (action=get_sessions) or a ping; the server does Observe."""
        action = notify_action(request, observable=self.observe)
        if action == "get_sessions":
            envelope = self.device.envelope(
                ["sessions", "statistics"],
                sessions=self.device.sessions(),
                statistics=self.device.statistics(),
            )
        else:
            envelope = self.device.envelope(["ping"])
        return reply(CONTENT, envelope)

    def _answering(self, handle: Handler) -> Handler:
        def answer(request: Request) -> Response:
            if len(self.client_ports) < _MAX_PORTS:
                self.client_ports[request.port] = None
            try:
                return handle(request)
            except DeviceError as exc:
                return error(exc)

        return answer


async def serve(
    host: str = "127.0.0.1",
    port: int = 5683,
    max_number: int = 999,
    ping_interval: float = 30.0,
    latency: float = 0.0,
    count: int = 1,
) -> None:
    """Run `count` simulators on ports `port`.. until this task is cancelled (`iotbridge sim
    pager`, the demo, the benchmarks' fleets: one process can stand in for many transmitters)."""
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
    """`python -m bridge.sim.pager [--host --port --max-number --ping-interval --latency]`."""
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
