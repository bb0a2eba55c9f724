"""`Transmitter` against the simulator: large answers, a slow device, IPv6 and host names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from bridge.coap.client import Transmitter
from bridge.sim.pager.server import PagerSimulator
from tests.adapter.conftest import SESSIONS, call
from tests.support import started_sim


@pytest.fixture
async def big_sim() -> AsyncIterator[PagerSimulator]:
    async with started_sim(max_number=10_000, ping_interval=60) as simulator:
        yield simulator


async def test_two_thousand_sessions_arrive_whole(big_sim: PagerSimulator) -> None:
    tx = Transmitter(big_sim.uri, timeout=5.0)
    try:
        for number in range(1, 2001):
            code, _ = await call(tx, "POST", body={"number": number, "label": f"guest {number}"})
            assert code == "2.01"
        started = time.monotonic()
        reply = await tx.request("GET", SESSIONS)
        assert time.monotonic() - started < 3.0
        assert len(reply.payload) > 100 * 1024  # a hundred blocks and more
        sessions = msgspec.json.decode(reply.payload)["sessions"]
        assert [s["number"] for s in sessions] == list(range(1, 2001))
        assert reply.etag
        again = await tx.request("GET", SESSIONS, etag=reply.etag)
        assert (again.code, again.payload) == ("2.03", b"")
    finally:
        await tx.close()


async def test_ten_thousand_sessions_within_the_default_timeout(big_sim: PagerSimulator) -> None:
    for number in range(1, 10_001):
        big_sim.console_create(number, label=f"guest {number}")
    tx = Transmitter(big_sim.uri, timeout=10.0)  # the bridge's default pager.timeout
    try:
        started = time.monotonic()
        reply = await tx.request("GET", SESSIONS)
        # ~2,260 blocks: about 0.6 s here (with aiocoap's reassembly on bytes, 0.8-2.5 s).
        assert time.monotonic() - started < 3.0
        assert len(reply.payload) > 2_000_000
        assert len(msgspec.json.decode(reply.payload)["sessions"]) == 10_000
    finally:
        await tx.close()


async def test_large_registration_and_notification_while_observing(
    tx: Transmitter, sim: PagerSimulator
) -> None:
    for number in range(1, 151):
        sim.console_create(number, label=f"guest {number}")
    stream = tx.observe("/v1/notify", query={"action": "get_sessions"})
    try:
        first = await anext(stream)
        assert len(first.payload) > 1024
        assert len(msgspec.json.decode(first.payload)["sessions"]) == 150
        sim.console_create(500, label="L" * 3000)
        async with asyncio.timeout(3):
            async for note in stream:
                body = msgspec.json.decode(note.payload)
                if body["responseTypes"] != ["ping"]:
                    break
        assert [(s["number"], s["label"]) for s in body["sessions"]] == [(500, "L" * 3000)]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_slow_device_answers_separately(tx: Transmitter, sim: PagerSimulator) -> None:
    sim.latency = 0.3  # the server ACKs at once and answers later (RFC 7252 §5.2.2)
    code, body = await call(tx, "POST", body={"number": 8})
    assert (code, body["sessions"][0]["number"]) == ("2.01", 8)
    stream = tx.observe("/v1/notify", query={"action": "get_sessions"})
    try:
        first = await anext(stream)
        assert [s["number"] for s in msgspec.json.decode(first.payload)["sessions"]] == [8]
        sim.latency = 0.0
        sim.console_page(8)
        async with asyncio.timeout(3):
            async for note in stream:
                if b'"paged"' in note.payload:
                    break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert tx.endpoints_used == 2  # nothing was discarded on the way


@pytest.mark.parametrize(("host", "uri_host"), [("::1", "[::1]"), ("127.0.0.1", "localhost")])
async def test_ipv6_literals_and_host_names(host: str, uri_host: str) -> None:
    sim = PagerSimulator(host=host, port=0)
    await sim.start()
    tx = Transmitter(f"coap://{uri_host}:{sim.port}", timeout=2.0)
    try:
        assert (await tx.request("GET", SESSIONS)).code == "2.05"
        assert (await tx.request("GET", SESSIONS)).code == "2.05"
        assert len(sim.client_ports) == 1
    finally:
        await tx.close()
        await sim.stop()
