"""A bare aiocoap client for the reference bridge and the CoAP floor: no policy at all.

One client context for every transmitter; aiocoap itself keeps NSTART=1 per peer, so exchanges
with one transmitter are serialised exactly as in the bridge. The peer address learnt from the
first reply is reused (no getaddrinfo per request).

Two configurations, chosen by the caller:
- the floor (and the harness's session creator) uses what the bridge's client uses
  (bridge/coap/client.py): the `simple6` transport, and no block-wise wrapper for requests and
  answers that fit one message (`BRIDGE_TRANSPORTS`, `blockwise=False`);
- the minimal reference bridge uses aiocoap with its defaults (`transports=None`: aiocoap's
  default client transports, udp6 for coap://; block-wise handling on), as the issue defines it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiocoap
from aiocoap.message import UndecidedRemote
from aiocoap.numbers import ContentFormat
from aiocoap.numbers.codes import Code

from benchmarks.workload import SESSIONS

_METHODS: Final = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
BRIDGE_TRANSPORTS: Final = ("simple6",)  # the bridge's client transport (bridge/coap/client.py)


class BareCoap:
    """`request()` to coap://127.0.0.1:<port>/v1/sessions; `start()` creates the context.

    `transports`: aiocoap transport names, None for aiocoap's defaults; `blockwise`: aiocoap's
    block-wise handling of each request (its default), or none (the bodies here fit one block).
    """

    def __init__(
        self,
        timeout: float = 10.0,
        *,
        transports: tuple[str, ...] | None = None,
        blockwise: bool = True,
    ) -> None:
        self._timeout = timeout
        self._transports = None if transports is None else list(transports)
        self._blockwise = blockwise
        self._context: Any = None
        self._remotes: dict[int, Any] = {}

    async def start(self) -> None:
        if self._transports is None:
            self._context = await aiocoap.Context.create_client_context()
        else:
            self._context = await aiocoap.Context.create_client_context(transports=self._transports)

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
            message.opt.content_format = ContentFormat.JSON
        remote = self._remotes.get(port)
        message.remote = remote or UndecidedRemote("coap", f"127.0.0.1:{port}")
        async with asyncio.timeout(self._timeout):
            exchange = self._context.request(message, handle_blockwise=self._blockwise)
            response = await exchange.response
        if remote is None:
            self._remotes[port] = response.remote
        return response.code.is_successful(), response.payload
