"""`Transmitter` against aiocoap's own server side, a peer that is not the bridge's simulator.

The client is aiocoap too; this checks the bridge's use of it end to end against a server it
did not write: block-wise answers, separate responses, query and Content-Format, Observe and
the explicit deregistration the client sends on its own (`coap._deregister`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import aiocoap.resource
import pytest

from bridge.coap.client import Transmitter

BODY = b"".join(b"%05d," % n for n in range(1000))  # 6,000 bytes: six blocks


class Big(aiocoap.resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    async def render_get(self, request: Any) -> Any:
        del request
        return aiocoap.Message(payload=BODY, etag=b"big1", content_format=0)


class Slow(aiocoap.resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: Any) -> Any:
        await asyncio.sleep(0.3)  # long enough for aiocoap to send an empty ACK first
        query = ",".join(request.opt.uri_query).encode()
        fmt = request.opt.content_format
        return aiocoap.Message(
            code=aiocoap.CHANGED, payload=request.payload + b"|" + query + b"|%d" % fmt
        )


class Counter(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.observers = 0

    def update_observation_count(self, newcount: int) -> None:
        self.observers = newcount

    async def render_get(self, request: Any) -> Any:
        del request
        return aiocoap.Message(payload=b"%d" % self.value)

    def bump(self) -> None:
        self.value += 1
        self.updated_state()


class Server:
    def __init__(self, port: int, counter: Counter) -> None:
        self.uri = f"coap://127.0.0.1:{port}"
        self.counter = counter


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    counter = Counter()
    site = aiocoap.resource.Site()
    site.add_resource(("big",), Big())
    site.add_resource(("slow",), Slow())
    site.add_resource(("counter",), counter)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["udp6"]
    )
    try:
        yield Server(port, counter)
    finally:
        await context.shutdown()


@pytest.fixture
async def tx(server: Server) -> AsyncIterator[Transmitter]:
    client = Transmitter(server.uri, timeout=3.0)
    try:
        yield client
    finally:
        await client.close()


async def test_block_wise_answer(tx: Transmitter) -> None:
    reply = await tx.request("GET", "/big")
    assert (reply.code, reply.payload, reply.etag) == ("2.05", BODY, b"big1")


async def test_separate_response_with_query_and_content_format(tx: Transmitter) -> None:
    reply = await tx.request("POST", "/slow", query={"a": 1, "b": "x"}, body=b"{}")
    assert (reply.code, reply.payload) == ("2.04", b"{}|a=1,b=x|50")


async def test_unknown_resource_is_a_reply(tx: Transmitter) -> None:
    assert (await tx.request("GET", "/nothing")).code == "4.04"


async def test_observe_notifications_and_deregistration(tx: Transmitter, server: Server) -> None:
    stream = tx.observe("/counter")
    assert (await anext(stream)).payload == b"0"
    assert server.counter.observers == 1
    for value in (b"1", b"2", b"3"):
        server.counter.bump()
        async with asyncio.timeout(3):
            assert (await anext(stream)).payload == value
    await stream.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(3):
        while server.counter.observers:  # noqa: ASYNC110 - aiocoap's hook sets the count
            await asyncio.sleep(0.02)
