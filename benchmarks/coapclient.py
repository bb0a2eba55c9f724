"""A bare aiocoap client for the reference bridge and the CoAP floor: no policy at all.

One client context (one UDP socket) for every transmitter; aiocoap itself keeps NSTART=1 per
peer, so exchanges with one transmitter are serialised exactly as in the bridge. The peer
address learnt from the first reply is reused, as the bridge does (no getaddrinfo per request).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiocoap
from aiocoap.message import UndecidedRemote
from aiocoap.numbers.codes import Code

from benchmarks.workload import SESSIONS

_METHODS: Final = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
CONTENT_FORMAT_JSON: Final = 50


class BareCoap:
    """`request()` to coap://127.0.0.1:<port>/v1/sessions; `start()` opens the socket."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._context: Any = None
        self._remotes: dict[int, Any] = {}

    async def start(self) -> None:
        self._context = await aiocoap.Context.create_client_context(transports=["udp6"])

    async def close(self) -> None:
        if self._context is not None:
            await self._context.shutdown()

    async def request(
        self, port: int, method: str, query: tuple[str, ...], body: bytes | None
    ) -> tuple[bool, bytes]:
        """(2.xx?, payload) of one confirmable exchange; raises TimeoutError past `timeout`."""
        message = aiocoap.Message(
            code=_METHODS[method], transport_tuning=aiocoap.Reliable, uri_path=SESSIONS
        )
        if query:
            message.opt.uri_query = query
        if body is not None:
            message.payload = body
            message.opt.content_format = CONTENT_FORMAT_JSON
        remote = self._remotes.get(port)
        message.remote = remote or UndecidedRemote("coap", f"127.0.0.1:{port}")
        async with asyncio.timeout(self._timeout):
            response = await self._context.request(message).response
        if remote is None:
            self._remotes[port] = response.remote
        return response.code.is_successful(), response.payload
