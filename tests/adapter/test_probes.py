"""The metrics and probes server over real loopback HTTP: httpx as the well-behaved client, raw
sockets as the hostile ones (idle connections by the thousand, oversized and malformed heads).

Before the bounds (security review, issue 14): 3,000 idle connections held 3,000 descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.ops.metrics import Metrics
from bridge.ops.probes import ProbeServer

Why = list[str | None]


@contextlib.asynccontextmanager
async def serving(
    why: Why | None = None, **options: float
) -> AsyncIterator[tuple[ProbeServer, Metrics]]:
    metrics = Metrics()
    reasons = why if why is not None else [None]
    server = ProbeServer("127.0.0.1:0", metrics, lambda: reasons[0], **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server, metrics
    finally:
        await server.close()


async def raw(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read()
    except ConnectionResetError:
        return b""  # closed before reading what we sent
    finally:
        writer.close()


async def test_routes_and_keep_alive() -> None:
    why: Why = ["MQTT session not up: default"]
    async with (
        serving(why) as (server, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert (await client.get("/livez")).text == "ok\n"
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.text == "not ready: MQTT session not up: default\n"
        why[0] = None
        assert (await client.get("/readyz?verbose=1")).text == "ready\n"
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert "# TYPE iotbridge_limits_reached_total counter" in metrics.text
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/livez", content=b"x" * 100)).status_code == 405
        head = await client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        # All of it on one connection: the server kept it open between requests.
        assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]


async def test_http_10_gets_its_answer_and_the_connection_closes() -> None:
    async with serving() as (server, _):
        answer = await raw(server.port, b"GET /livez HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nok\n")


async def test_idle_connections_are_capped_and_counted() -> None:
    async with serving(max_connections=8, idle_timeout=30) as (server, metrics):
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
        await asyncio.sleep(0.1)
        refused = [
            await raw(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(3)
        ]
        assert refused == [b"", b"", b""]  # closed at once, nothing read
        limit = {"limit": "http_connections"}
        assert metrics.registry.get_sample_value("iotbridge_limits_reached_total", limit) == 3
        for _, writer in idle[:2]:
            writer.close()
        await asyncio.sleep(0.1)
        served = await raw(
            server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert served.startswith(b"HTTP/1.1 200 ")
        for _, writer in idle[2:]:
            writer.close()


async def test_an_idle_connection_is_closed() -> None:
    async with serving(idle_timeout=0.3) as (server, _):
        started = asyncio.get_running_loop().time()
        assert await raw(server.port, b"GET /liv", wait=5) == b""  # half a request, then silence
        took = asyncio.get_running_loop().time() - started
    assert 0.25 < took < 2


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", b"400"),
        (b"GET /livez HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
    ],
)
async def test_bad_requests_are_answered_and_closed(request_bytes: bytes, status: bytes) -> None:
    async with serving() as (server, _):
        answer = await raw(server.port, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status)
        # ...and the server still serves everyone else.
        again = await raw(
            server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert again.startswith(b"HTTP/1.1 200 ")
