"""`Transmitter` against the simulator over real UDP: errors, recovery, rotation, concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from bridge.coap.client import CoapReply, Transmitter
from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.sim.pager.server import PagerSimulator
from tests.support import started_sim

SESSIONS = "/v1/sessions"


def create(number: int) -> bytes:
    return msgspec.json.encode({"number": number})


@pytest.mark.parametrize(
    ("code", "ok"), [("2.01", True), ("2.03", True), ("4.04", False), ("5.03", False)]
)
def test_reply_ok_is_success_class(code: str, ok: bool) -> None:
    assert CoapReply(code=code, payload=b"", etag=None).ok is ok


def test_constructor_refuses_other_schemes_and_does_no_io() -> None:
    with pytest.raises(ValueError, match="coap://"):
        Transmitter("http://127.0.0.1:5683", timeout=1)
    assert Transmitter("coap://127.0.0.1:5683", timeout=1).endpoints_used == 0


async def test_unknown_method_is_refused(tx: Transmitter) -> None:
    with pytest.raises(ValueError, match="PATCH"):
        await tx.request("PATCH", SESSIONS)


async def test_device_errors_are_replies_not_exceptions(tx: Transmitter) -> None:
    reply = await tx.request("GET", SESSIONS, query={"number": 77})
    assert reply == CoapReply(
        code="4.04", payload=b'{"error":"no active session for number 77"}', etag=None
    )
    assert not reply.ok


async def test_request_without_start_opens_an_endpoint(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=2.0)
    try:
        assert (await tx.request("GET", SESSIONS)).code == "2.05"
        assert tx.endpoints_used == 1
    finally:
        await tx.close()
        await tx.close()  # idempotent


async def test_silent_device_times_out_within_timeout(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=0.5)
    try:
        await sim.set_silent(True)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="no answer") as caught:
            await tx.request("GET", SESSIONS)
        assert 0.45 <= time.monotonic() - started < 1.0
        assert caught.value.code == "upstream_timeout"
        # Once it answers again the next request gets through at once, on a fresh endpoint:
        # the old socket would still be retransmitting and hold the next CON back (NSTART=1).
        await sim.set_silent(False)
        started = time.monotonic()
        assert (await tx.request("GET", SESSIONS)).code == "2.05"
        assert time.monotonic() - started < 0.3
        assert tx.endpoints_used == 2
    finally:
        await tx.close()


async def test_slow_device_times_out_then_recovers(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=0.2)
    try:
        sim.latency = 0.5
        with pytest.raises(UpstreamTimeout):
            await tx.request("POST", SESSIONS, body=create(1))
        sim.latency = 0.0
        await asyncio.sleep(0.4)  # the device is still working on the create
        reply = await tx.request("GET", SESSIONS, query={"number": 1})
        assert reply.ok  # the slow create did happen: timeouts say nothing about the outcome
    finally:
        await tx.close()


async def test_nobody_listening_is_unavailable_quickly(sim: PagerSimulator) -> None:
    port = sim.port
    await sim.stop()
    tx = Transmitter(f"coap://127.0.0.1:{port}", timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="unreachable") as caught:
            await tx.request("GET", SESSIONS)
        assert time.monotonic() - started < 0.5  # ICMP port unreachable, not a timeout
        assert isinstance(caught.value, UpstreamError)
        assert caught.value.__cause__ is not None
    finally:
        await tx.close()


async def test_transmitter_restart_is_survived() -> None:
    sim = PagerSimulator(port=0)
    await sim.start()
    port = sim.port
    tx = Transmitter(sim.uri, timeout=1.0)
    try:
        assert (await tx.request("POST", SESSIONS, body=create(5))).code == "2.01"
        await sim.stop()
        with pytest.raises(UpstreamError):
            await tx.request("GET", SESSIONS)
        with pytest.raises(UpstreamError):
            await tx.request("GET", SESSIONS)
        sim = PagerSimulator(port=port)
        await sim.start()
        reply = await tx.request("POST", SESSIONS, body=create(5))
        assert reply.code == "2.01"  # a fresh device: number 5 is free again
        assert (await tx.request("GET", SESSIONS)).ok
    finally:
        await tx.close()
        await sim.stop()


async def test_endpoints_rotate_after_n_requests(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=2.0, rotate_after=20)
    try:
        replies = [await tx.request("GET", SESSIONS, query={"number": 1}) for _ in range(100)]
        assert {r.code for r in replies} == {"4.04"}  # every one answered
        assert tx.endpoints_used == 5
        assert len(sim.client_ports) == 5
    finally:
        await tx.close()


async def test_concurrent_requests_are_serialised_in_order(sim: PagerSimulator) -> None:
    sim.latency = 0.005
    tx = Transmitter(sim.uri, timeout=2.0)
    try:
        replies = await asyncio.gather(
            *(tx.request("POST", SESSIONS, body=create(n)) for n in range(1, 21))
        )
        assert [r.code for r in replies] == ["2.01"] * 20
        assert [number for number, _, _ in sim.received] == list(range(1, 21))
        assert len(sim.client_ports) == 1
    finally:
        await tx.close()


async def first_change(stream: AsyncIterator[CoapReply]) -> CoapReply:
    async for note in stream:
        if b'"ping"' not in note.payload:
            return note
    raise AssertionError("observation ended")


async def test_observation_runs_alongside_requests(tx: Transmitter, sim: PagerSimulator) -> None:
    stream = tx.observe("/v1/notify", query={"action": "get_sessions"})
    assert (await anext(stream)).code == "2.05"
    for number in range(1, 11):
        async with asyncio.timeout(2):
            reply = await tx.request("POST", SESSIONS, body=create(number))
            assert reply.code == "2.01"
            note = await first_change(stream)
        assert msgspec.json.decode(note.payload)["sessions"][0]["number"] == number
    assert tx.endpoints_used == 2  # requests and the observation each have their own socket
    assert len(sim.client_ports) == 2
    await stream.aclose()  # type: ignore[attr-defined]


async def test_observation_survives_request_rotation(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=2.0, rotate_after=16)
    stream = tx.observe("/v1/notify")
    try:
        await anext(stream)
        for number in range(1, 41):
            await tx.request("POST", SESSIONS, body=create(number))
        async with asyncio.timeout(2):
            numbers = [
                msgspec.json.decode((await first_change(stream)).payload)["sessions"][0]["number"]
                for _ in range(40)
            ]
        assert numbers == list(range(1, 41))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await tx.close()


async def test_lost_observation_raises_timeout_and_can_re_register() -> None:
    sim = PagerSimulator(port=0, ping_interval=0.1)
    await sim.start()
    port = sim.port
    tx = Transmitter(sim.uri, timeout=1.0)
    try:
        stream = tx.observe("/v1/notify", idle=0.5)
        await anext(stream)
        await anext(stream)  # a ping
        await sim.stop()  # the device forgets its observers and says nothing
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="no notification"):
            async for _ in stream:
                pass
        assert time.monotonic() - started < 1.0
        sim = PagerSimulator(port=port, ping_interval=0.1)
        await sim.start()
        again = tx.observe("/v1/notify", idle=0.5)
        assert (await anext(again)).ok
        assert sim.observers == 1
        await again.aclose()  # type: ignore[attr-defined]
    finally:
        await tx.close()
        await sim.stop()


async def test_pings_keep_the_observation_alive() -> None:
    """The device's pings are confirmable notifications; aiocoap ACKs them, and each one
    resets the idle clock, so a quiet but live device never times the observation out."""
    async with started_sim(ping_interval=0.1) as sim:
        tx = Transmitter(sim.uri, timeout=1.0)
        stream = tx.observe("/v1/notify", idle=0.4)
        try:
            await anext(stream)
            pings = 0
            async with asyncio.timeout(2):
                async for note in stream:
                    assert b'"ping"' in note.payload
                    pings += 1
                    if pings == 12:  # 1.2 s: three times the idle time
                        break
            assert sim.observers == 1
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await tx.close()


async def test_refused_observe_is_yielded_then_ends() -> None:
    async with started_sim(observe=False) as sim:
        tx = Transmitter(sim.uri, timeout=1.0)
        try:
            replies = [reply.code async for reply in tx.observe("/v1/notify")]
            assert replies == ["4.04"]
        finally:
            await tx.close()


async def test_registration_to_a_dead_device_is_unavailable(sim: PagerSimulator) -> None:
    port = sim.port
    await sim.stop()
    tx = Transmitter(f"coap://127.0.0.1:{port}", timeout=1.0)
    try:
        with pytest.raises(UpstreamUnavailable):
            async for _ in tx.observe("/v1/notify"):
                pass
    finally:
        await tx.close()


async def test_ended_observation_is_dropped_by_the_device(
    tx: Transmitter, sim: PagerSimulator
) -> None:
    stream = tx.observe("/v1/notify")
    await anext(stream)
    assert sim.observers == 1
    await stream.aclose()  # type: ignore[attr-defined]
    # The client deregisters (or RSTs the next ping); the device then forgets it.
    async with asyncio.timeout(3):
        while sim.observers:  # noqa: ASYNC110 - the count is all the simulator exposes
            await asyncio.sleep(0.05)


async def test_close_ends_running_observations(sim: PagerSimulator) -> None:
    tx = Transmitter(sim.uri, timeout=1.0)
    stream = tx.observe("/v1/notify")
    assert (await anext(stream)).ok
    await tx.close()
    with pytest.raises(UpstreamUnavailable, match="was closed"):
        async with asyncio.timeout(1):
            await anext(stream)
