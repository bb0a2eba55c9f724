"""`/metrics`, `/livez` and `/readyz` over HTTP/1.1, on `http.addr`.

HTTP/1.1 is h11's (the codec httpx itself stands on): it parses each request, frames each
response and says when a connection may be reused; this module only routes three GETs on asyncio
streams. Ready means every site's MQTT session is up with its subscriptions granted, and no
background task keeps failing (`Bridge.not_ready`).

Bounded against anyone who can reach the port: at most `MAX_CONNECTIONS` at once (later ones
are closed at once and counted in `iotbridge_limits_reached_total{limit="http_connections"}`), a
connection
idle for `IDLE_TIMEOUT` seconds is closed, and a request head larger than `MAX_HEAD` is
answered 431 and the connection closed. Scrapers and kubelets use one or two connections each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.errors import ConfigError
from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 64
IDLE_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 8192
_TEXT: Final = b"text/plain; charset=utf-8"


class ProbeServer:
    """Serves the probes until closed. `port` is known once `start()` returned."""

    def __init__(
        self,
        addr: str,
        metrics: Metrics,
        not_ready: Callable[[], str | None],
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        host, _, port = addr.rpartition(":")
        self._host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an explicit ":port" means all
        self._port = int(port)
        self._metrics = metrics
        self._not_ready = not_ready
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._open = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; ConfigError (exit code 2) if the address cannot be had, e.g. in use."""
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            where = f"{self._host}:{self._port}"
            raise ConfigError(
                f"configuration: http.addr: cannot listen on {where}: {exc.strerror or exc}"
                " (IOTBRIDGE_HTTP_ADDR)"
            ) from None
        log.info("metrics and probes on http://%s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            self._metrics.child(self._metrics.limits_reached, "http_connections").inc()
            writer.close()
            return
        self._open += 1
        try:
            await self._converse(h11.Connection(h11.SERVER, MAX_HEAD), reader, writer)
        except (TimeoutError, OSError, h11.ProtocolError):
            pass  # idle, gone, or not speaking HTTP: the connection is simply closed
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _converse(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer requests until either side closes or the connection idles too long."""
        head = 0  # bytes of the request head being received
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # A malformed request: say so (400) if we still may, and close.
                await self._refuse(conn, writer, exc.error_status_hint)
                return
            if event is h11.NEED_DATA:
                head = await self._receive(conn, reader, head)
                if head > MAX_HEAD:  # h11 bounds only a head still incomplete
                    await self._refuse(conn, writer, 431)
                    return
            elif event is h11.PAUSED:
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()  # keep-alive: the next request
                head = 0
            elif isinstance(event, h11.Request):
                status, ctype, body = self._route(event.method, event.target)
                await self._respond(conn, writer, event.method, status, ctype, body)
                if conn.our_state is h11.MUST_CLOSE:
                    return
            elif isinstance(event, h11.ConnectionClosed):
                return
            # Data and EndOfMessage of a request: read past, no route takes a body.

    async def _receive(self, conn: h11.Connection, reader: asyncio.StreamReader, head: int) -> int:
        """Read more within the idle timeout; returns the bytes of request head seen so far
        (past MAX_HEAD the data is not handed to h11)."""
        async with asyncio.timeout(self._idle_timeout):
            data = await reader.read(4096)
        if conn.their_state is h11.IDLE:
            head += len(data)
        if head <= MAX_HEAD:
            conn.receive_data(data)  # b"" is the end of the stream
        return head

    async def _refuse(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        """Answer a request that is not served with `status`, if no answer was begun."""
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._respond(conn, writer, b"GET", status, _TEXT, b"bad request\n")

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        method: bytes,
        status: int,
        ctype: bytes,
        body: bytes,
    ) -> None:
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        if method != b"HEAD":
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    def _route(self, method: bytes, target: bytes) -> tuple[int, bytes, bytes]:
        if method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"method not allowed\n"
        path = target.partition(b"?")[0]
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self._metrics.registry)
        if path == b"/livez":
            return 200, _TEXT, b"ok\n"
        if path == b"/readyz":
            why = self._not_ready()
            if why is None:
                return 200, _TEXT, b"ready\n"
            return 503, _TEXT, f"not ready: {why}\n".encode()
        return 404, _TEXT, b"not found\n"
