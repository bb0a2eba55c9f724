"""`/metrics`, `/livez` and `/readyz` over HTTP/1.1, on `http.addr`.

A few lines of asyncio instead of a web framework: three GET routes, no bodies to parse.
Ready means the MQTT session is up and the command subscriptions were granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.errors import ConfigError
from bridge.metrics import Metrics

log = logging.getLogger(__name__)
_MAX_HEAD = 8192


class ProbeServer:
    """Serves the probes until cancelled. `port` is known once `start()` returned."""

    def __init__(self, addr: str, metrics: Metrics, not_ready: Callable[[], str | None]) -> None:
        host, _, port = addr.rpartition(":")
        self._host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an explicit ":port" means all
        self._port = int(port)
        self._metrics = metrics
        self._not_ready = not_ready
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
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if len(head) > _MAX_HEAD:
                    break
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0].partition(b"?")[0]
                status, ctype, body = self._route(method, path)
                writer.write(
                    b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                    % (status, ctype, len(body))
                    + (body if method != b"HEAD" else b"")
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: bytes, path: bytes) -> tuple[bytes, bytes, bytes]:
        text = b"text/plain; charset=utf-8"
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", text, b"method not allowed\n"
        if path == b"/metrics":
            return b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(self._metrics.registry)
        if path == b"/livez":
            return b"200 OK", text, b"ok\n"
        if path == b"/readyz":
            why = self._not_ready()
            if why is None:
                return b"200 OK", text, b"ready\n"
            return b"503 Service Unavailable", text, f"not ready: {why}\n".encode()
        return b"404 Not Found", text, b"not found\n"
