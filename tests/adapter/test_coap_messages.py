"""`Transmitter` against a scripted CoAP peer: the message layer aiocoap gives it.

RFC 7252 (messages), 7641 (Observe) and 7959 (Block2), as seen on the wire.

The peer is a bare UDP socket whose datagrams are built and parsed by aiocoap's own
`Message.encode()` / `Message.decode()` (no CoAP bytes by hand); each test plays the device's
side of one exchange and checks what the client sent and returned. Retransmission timing runs
with aiocoap's ACK_TIMEOUT shortened, so the RFC's doubling is visible in milliseconds.

Where aiocoap's own behaviour differs from what the bridge needs, a test shows the library
doing it (`test_aiocoap_*`) next to the test of the bridge's workaround.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiocoap
import pytest
import uvloop
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from bridge.coap import client as coap
from bridge.coap.client import CoapReply, Transmitter
from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

Address = tuple[str, int]
SESSIONS = "/v1/sessions"
CON, NON, ACK, RST = aiocoap.CON, aiocoap.NON, aiocoap.ACK, aiocoap.RST


class Peer(asyncio.DatagramProtocol):
    """The device's side: records every datagram, sends whatever the test scripts."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Any, Address, float]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._mid = 0x7000

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queue.put_nowait((aiocoap.Message.decode(data), addr, time.monotonic()))

    async def receive(self, within: float = 2.0) -> tuple[Any, Address]:
        message, addr, _ = await self.timed(within)
        return message, addr

    async def timed(self, within: float = 2.0) -> tuple[Any, Address, float]:
        async with asyncio.timeout(within):
            return await self.queue.get()

    async def nothing(self, within: float) -> None:
        with pytest.raises(TimeoutError):
            await self.receive(within)

    def send(
        self,
        addr: Address,
        mtype: Any,
        code: Any,
        mid: int | None = None,
        token: bytes = b"",
        payload: bytes = b"",
        **options: Any,
    ) -> int:
        """Send one message (a fresh peer MID unless given); returns the MID used."""
        if mid is None:
            self._mid += 1
            mid = self._mid
        message = aiocoap.Message(code=code, payload=payload, **options)
        message.mtype, message.mid, message.token = mtype, mid, token
        assert self.transport is not None
        self.transport.sendto(message.encode(), addr)
        return mid

    def answer(self, request: Any, addr: Address, payload: bytes = b"{}") -> None:
        """A piggybacked 2.05 for `request`."""
        self.send(addr, ACK, Code.CONTENT, request.mid, request.token, payload)


async def open_peer(port: int = 0) -> tuple[asyncio.DatagramTransport, Peer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", port))
    protocol.port = transport.get_extra_info("sockname")[1]
    return transport, protocol


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    transport, protocol = await open_peer()
    try:
        yield protocol
    finally:
        transport.close()


@pytest.fixture
async def tx(peer: Peer) -> AsyncIterator[Transmitter]:
    client = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=2.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def fast_retransmit(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(aiocoap.Reliable, "ACK_TIMEOUT", 0.02)
    return 0.02


def spawn(tx: Transmitter, method: str = "GET", **kwargs: Any) -> asyncio.Task[CoapReply]:
    return asyncio.create_task(tx.request(method, SESSIONS, **kwargs))


# -- requests ------------------------------------------------------------------------------


async def test_requests_are_confirmable_with_fresh_tokens_and_counting_mids(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx, query={"number": 5})
    first, addr = await peer.receive()
    assert (first.mtype, first.code) == (CON, Code.GET)
    assert first.opt.uri_path == ("v1", "sessions")
    assert first.opt.uri_query == ("number=5",)
    assert (first.opt.uri_host, first.opt.uri_port) == (None, None)  # addressed by IP
    assert 1 <= len(first.token) <= 8
    peer.answer(first, addr, b'{"a":1}')
    assert await task == CoapReply("2.05", b'{"a":1}', None)
    task = spawn(tx)
    second, again = await peer.receive()
    assert again == addr  # the same socket
    assert second.mid == (first.mid + 1) & 0xFFFF
    assert second.token != first.token
    peer.answer(second, addr)
    await task


async def test_a_body_carries_content_format_json_and_an_etag(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx, "PUT", query={"number": 7}, body=b'{"action":"page"}', etag=b"\x01\x02")
    request, addr = await peer.receive()
    assert request.code == Code.PUT
    assert request.opt.etags == (b"\x01\x02",)
    assert request.opt.content_format == 50
    assert request.opt.uri_query == ("number=7",)
    assert request.payload == b'{"action":"page"}'
    peer.send(addr, ACK, Code.CHANGED, request.mid, request.token, etag=b"\x09")
    assert await task == CoapReply("2.04", b"", b"\x09")


async def test_a_lost_request_is_retransmitted_identically(
    tx: Transmitter, peer: Peer, fast_retransmit: float
) -> None:
    task = spawn(tx)
    original, _, sent = await peer.timed()
    again, addr, resent = await peer.timed()
    assert (again.mid, again.token, again.opt, again.mtype) == (
        original.mid,
        original.token,
        original.opt,
        CON,
    )
    assert fast_retransmit <= resent - sent < fast_retransmit * 1.5 + 0.02
    peer.answer(again, addr)
    assert (await task).code == "2.05"


async def test_retransmissions_double_and_stop_after_max_retransmit(
    peer: Peer, fast_retransmit: float
) -> None:
    tx = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await tx.request("GET", SESSIONS)
        # Given up after the wait that follows the 4th retransmission: 31 x the first timeout.
        assert time.monotonic() - started < 31 * fast_retransmit * 1.5 + 0.3
    finally:
        await tx.close()
    times = []
    while not peer.queue.empty():
        message, _, at = peer.queue.get_nowait()
        assert message.mtype == CON
        times.append(at)
    assert len(times) == 1 + aiocoap.Reliable.MAX_RETRANSMIT
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for shorter, longer in itertools.pairwise(gaps):
        assert 1.5 < longer / shorter < 2.7


async def test_the_overall_timeout_bounds_retransmission(peer: Peer) -> None:
    tx = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"within 0\.3 s"):
            await tx.request("GET", SESSIONS)
        assert 0.28 < time.monotonic() - started < 0.6
    finally:
        await tx.close()


async def test_a_timed_out_or_cancelled_request_leaves_no_retransmission_behind(
    peer: Peer, fast_retransmit: float
) -> None:
    tx = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=0.05)
    try:
        with pytest.raises(UpstreamTimeout):
            await tx.request("GET", SESSIONS)
        _, timed_out = await peer.receive()
        task = spawn(tx)
        while (await peer.receive())[1] == timed_out:  # until the second request is out
            pass
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        while not peer.queue.empty():  # whatever was on the wire before the cancel
            peer.queue.get_nowait()
        await peer.nothing(fast_retransmit * 8)  # both contexts are shut down
        assert tx.endpoints_used == 2
    finally:
        await tx.close()


async def test_separate_response_is_acknowledged_and_its_duplicate_reset(
    tx: Transmitter, peer: Peer, fast_retransmit: float
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, ACK, Code.EMPTY, request.mid)  # empty ACK: "the answer comes later"
    await peer.nothing(fast_retransmit * 4)  # acknowledged: no retransmission
    mid = peer.send(addr, CON, Code.CONTENT, None, request.token, b"late")
    ack, _ = await peer.receive()
    assert (ack.mtype, ack.code, ack.mid, ack.token) == (ACK, Code.EMPTY, mid, b"")
    assert await task == CoapReply("2.05", b"late", None)
    # Our ACK was lost, say: the device sends the response again. aiocoap deduplicates only
    # requests (aiocoap/messagemanager.py, dispatch_message: responses "are idempotent"), so
    # the copy meets an RST, which ends the device's retransmissions just as well.
    peer.send(addr, CON, Code.CONTENT, mid, request.token, b"late")
    reset, _ = await peer.receive()
    assert (reset.mtype, reset.mid) == (RST, mid)
    task = spawn(tx)  # and the client carries on, on the same socket
    request, again = await peer.receive()
    assert again == addr
    peer.answer(request, addr)
    assert (await task).ok


async def test_a_non_confirmable_response_is_taken_and_not_acknowledged(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, NON, Code.CONTENT, None, request.token, b"non")
    assert (await task).payload == b"non"
    await peer.nothing(0.1)  # a NON is not acknowledged


async def test_reset_is_an_upstream_error_and_the_socket_is_replaced(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, RST, Code.EMPTY, request.mid)
    with pytest.raises(UpstreamError, match="RST") as caught:
        await task
    assert type(caught.value) is UpstreamError
    task = spawn(tx)
    request, second = await peer.receive()
    assert second != addr  # a fresh socket
    peer.answer(request, second)
    await task
    assert tx.endpoints_used == 2


async def test_an_ack_echoing_another_token_is_ignored(
    tx: Transmitter, peer: Peer, fast_retransmit: float
) -> None:
    """aiocoap matches the ACK to the exchange by message ID (so the CON is no longer
    retransmitted) but drops its response, whose token matches no request: the right answer
    can still come separately; if none does, the request times out."""
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, ACK, Code.CONTENT, request.mid, b"\xff" * 4, b"wrong")
    await peer.nothing(fast_retransmit * 8)
    assert not task.done()
    mid = peer.send(addr, CON, Code.CONTENT, None, request.token, b"right")
    ack, _ = await peer.receive()
    assert (ack.mtype, ack.mid) == (ACK, mid)
    assert (await task).payload == b"right"


async def test_an_ack_echoing_another_token_alone_ends_in_a_timeout(peer: Peer) -> None:
    tx = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=0.3)
    try:
        task = spawn(tx)
        request, addr = await peer.receive()
        peer.send(addr, ACK, Code.CONTENT, request.mid, request.token + b"x", b"wrong")
        with pytest.raises(UpstreamTimeout):
            await task
    finally:
        await tx.close()


async def test_a_duplicate_answer_is_not_taken_for_the_next_one(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.answer(request, addr, b"first")
    assert (await task).payload == b"first"
    task = spawn(tx)
    second, _ = await peer.receive()
    peer.answer(request, addr, b"first")  # the first answer again, arriving late
    await asyncio.sleep(0.05)
    assert not task.done()
    peer.answer(second, addr, b"second")
    assert (await task).payload == b"second"


async def test_unexpected_confirmables_are_reset(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.answer(request, addr)
    await task
    unknown = peer.send(addr, CON, Code.CONTENT, None, b"nope", b"?")
    ping = peer.send(addr, CON, Code.EMPTY)  # CoAP ping (RFC 7252 §4.3)
    replies = [await peer.receive() for _ in range(2)]
    assert [(m.mtype, m.mid) for m, _ in replies] == [(RST, unknown), (RST, ping)]


# -- critical options (RFC 7252 §5.4.1) ----------------------------------------------------

UNKNOWN_CRITICAL = 65001  # odd: critical; not registered
UNKNOWN_ELECTIVE = 65002


async def answer_with_option(peer: Peer, number: int) -> None:
    request, addr = await peer.receive()
    message = aiocoap.Message(code=Code.CONTENT, payload=b"{}")
    message.opt.add_option(OpaqueOption(number, b"\x01"))
    message.mtype, message.mid, message.token = ACK, request.mid, request.token
    assert peer.transport is not None
    peer.transport.sendto(message.encode(), addr)


async def test_aiocoap_accepts_an_unknown_critical_option_in_a_response(peer: Peer) -> None:
    """The library limit: over UDP, aiocoap hands such a response on like any other."""
    context = await aiocoap.Context.create_client_context(transports=["simple6"])
    try:
        request = aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{peer.port}/v1/sessions")
        pending = asyncio.ensure_future(context.request(request).response)
        await answer_with_option(peer, UNKNOWN_CRITICAL)
        response = await pending
        assert response.opt.get_option(UNKNOWN_CRITICAL)
    finally:
        await context.shutdown()


async def test_an_unknown_critical_option_rejects_the_response(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    await answer_with_option(peer, UNKNOWN_CRITICAL)
    with pytest.raises(UpstreamError, match="unknown critical option 65001"):
        await task
    task = spawn(tx)
    await answer_with_option(peer, UNKNOWN_ELECTIVE)  # elective: ignored
    assert await task == CoapReply("2.05", b"{}", None)


# -- Block2 --------------------------------------------------------------------------------

BODY = bytes(range(256)) * 10 + b"tail"  # 2,564 bytes: three blocks of 1,024
KB = b"x" * 1024


def serve_block(
    peer: Peer, request: Any, addr: Address, body: bytes, etag: bytes, szx: int = 6
) -> None:
    num = request.opt.block2.block_number if request.opt.block2 is not None else 0
    size = 16 << szx
    chunk = body[num * size : (num + 1) * size]
    block2 = (num, (num + 1) * size < len(body), szx)
    peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, chunk, etag=etag, block2=block2)


async def test_a_block_wise_answer_is_fetched_whole(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx, query={"number": 3})
    tokens, mids, addrs = set(), set(), set()
    for num in range(3):
        request, addr = await peer.receive()
        tokens.add(request.token)
        mids.add(request.mid)
        addrs.add(addr)
        assert (request.code, request.opt.uri_path) == (Code.GET, ("v1", "sessions"))
        assert request.opt.uri_query == ("number=3",)
        if num:
            assert tuple(request.opt.block2) == (num, False, 6)
        serve_block(peer, request, addr, BODY, b"e1")
    assert await task == CoapReply("2.05", BODY, b"e1")
    assert len(tokens) == len(mids) == 3
    assert len(addrs) == 1  # the device keeps the representation for that socket


async def test_every_block_counts_towards_rotation(peer: Peer) -> None:
    """Each block takes a message ID, so a block-wise answer brings the next rotation nearer."""
    tx = Transmitter(f"coap://127.0.0.1:{peer.port}", timeout=2.0, rotate_after=4)
    try:
        task = spawn(tx)
        sources = set()
        for _ in range(3):
            request, addr = await peer.receive()
            sources.add(addr)
            serve_block(peer, request, addr, BODY, b"e")
        assert (await task).payload == BODY
        task = spawn(tx)  # the 4th message ID of that socket
        request, addr = await peer.receive()
        sources.add(addr)
        peer.answer(request, addr)
        await task
        assert len(sources) == 1
        task = spawn(tx)  # rotated: a fresh socket
        request, addr = await peer.receive()
        assert addr not in sources
        peer.answer(request, addr)
        assert (await task).ok
        assert tx.endpoints_used == 2
    finally:
        await tx.close()


async def test_the_device_may_pick_a_smaller_block_size(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    body = b"x" * 100
    for num in range(2):
        request, addr = await peer.receive()
        if num:
            assert tuple(request.opt.block2) == (1, False, 2)
        serve_block(peer, request, addr, body, b"e", szx=2)  # 64-byte blocks
    assert (await task).payload == body


async def test_a_representation_changing_midway_is_read_again_once(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, first = await peer.receive()
    serve_block(peer, request, first, BODY, b"old")
    request, addr = await peer.receive()
    serve_block(peer, request, addr, b"N" * 2000, b"new")  # changed under us
    request, addr = await peer.receive()
    assert request.opt.block2 is None  # starts over, on a fresh socket
    assert addr != first
    serve_block(peer, request, addr, b"N" * 2000, b"new")
    request, addr = await peer.receive()
    serve_block(peer, request, addr, b"N" * 2000, b"new")
    assert await task == CoapReply("2.05", b"N" * 2000, b"new")


async def test_a_representation_that_keeps_changing_fails(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    for etag in (b"1", b"2", b"3", b"4"):
        request, addr = await peer.receive()
        serve_block(peer, request, addr, BODY, etag)
    with pytest.raises(UpstreamError, match="changed midway"):
        await task


async def test_a_non_get_is_never_repeated_from_block_zero(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx, "POST", body=b"{}")
    request, addr = await peer.receive()
    serve_block(peer, request, addr, BODY, b"1")
    request, addr = await peer.receive()
    # aiocoap asks for the next block with the same request, minus its body.
    assert (request.code, tuple(request.opt.block2), request.payload) == (
        Code.POST,
        (1, False, 6),
        b"",
    )
    serve_block(peer, request, addr, BODY, b"2")
    with pytest.raises(UpstreamError, match="changed midway"):
        await task
    await peer.nothing(0.1)


def test_aiocoap_copies_the_whole_body_for_every_block() -> None:
    """The library limit behind `_Body`: reassembly appends with `+=`, so on bytes every block
    copies everything received so far (quadratic: 2.3 MB took 0.8-2.5 s of CPU)."""
    assembled = aiocoap.Message(code=Code.CONTENT, payload=b"a" * 1024, block2=(0, True, 6))
    block = aiocoap.Message(code=Code.CONTENT, payload=b"b" * 1024, block2=(1, True, 6))
    before = assembled.payload
    assembled._append_response_block(block)
    assert assembled.payload is not before  # a new 2 KB object: the first KB copied again
    assembled.payload = bytearray(assembled.payload)
    before = assembled.payload
    block.opt.block2 = (2, True, 6)
    assembled._append_response_block(block)
    assert assembled.payload is before  # a bytearray grows in place


async def test_an_endless_block_wise_answer_is_cut_off(
    tx: Transmitter, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap, "_MAX_BODY", 10 * 1024)
    task = spawn(tx)
    for num in range(10):
        request, addr = await peer.receive()
        assert (request.opt.block2.block_number if num else 0) == num
        peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, KB, block2=(num, True, 6))
    request, addr = await peer.receive()
    peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, KB, block2=(10, True, 6))
    with pytest.raises(UpstreamError, match="larger than 10240 bytes"):
        await task


# -- Observe -------------------------------------------------------------------------------


def note(
    peer: Peer,
    addr: Address,
    token: bytes,
    sequence: int | None,
    payload: bytes,
    *,
    mid: int | None = None,
    code: Any = Code.CONTENT,
    **options: Any,
) -> int:
    if sequence is not None:
        options["observe"] = sequence
    return peer.send(addr, CON, code, mid, token, payload, **options)


async def registered(
    tx: Transmitter, peer: Peer, **kwargs: float
) -> tuple[AsyncIterator[CoapReply], Any, Address]:
    stream = tx.observe("/v1/notify", query={"action": "get_sessions"}, **kwargs)
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    assert (request.mtype, request.code, request.opt.observe) == (CON, Code.GET, 0)
    peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, b"0", observe=5)
    assert (await first).payload == b"0"
    return stream, request, addr


async def acked(peer: Peer, mid: int) -> None:
    ack, _ = await peer.receive()
    assert (ack.mtype, ack.code, ack.mid) == (ACK, Code.EMPTY, mid)


async def test_notifications_in_order_duplicates_and_stale_ones_dropped(
    tx: Transmitter, peer: Peer
) -> None:
    stream, request, addr = await registered(tx, peer)
    token = request.token
    first = note(peer, addr, token, 6, b"6")
    await acked(peer, first)
    note(peer, addr, token, 6, b"6", mid=first)  # duplicate: ACKed again, not delivered
    await acked(peer, first)
    await acked(peer, note(peer, addr, token, 4, b"4"))  # older than the newest: dropped
    await acked(peer, note(peer, addr, token, 7, b"7"))
    assert [(await anext(stream)).payload for _ in range(2)] == [b"6", b"7"]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_aiocoap_observation_iterator_keeps_only_the_newest(peer: Peer) -> None:
    """The library limit behind `_Inbox`: `async for` over an aiocoap observation drops every
    notification that arrived while the consumer was busy with an earlier one."""
    context = await aiocoap.Context.create_client_context(transports=["simple6"])
    try:
        message = aiocoap.Message(
            code=Code.GET, uri=f"coap://127.0.0.1:{peer.port}/v1/notify", observe=0
        )
        request = context.request(message, handle_blockwise=False)
        pending = asyncio.ensure_future(request.response)
        registration, addr = await peer.receive()
        peer.send(addr, ACK, Code.CONTENT, registration.mid, registration.token, b"0", observe=1)
        await pending
        notifications = aiter(request.observation)
        for sequence in (2, 3, 4):
            await acked(peer, note(peer, addr, registration.token, sequence, b"%d" % sequence))
        assert (await anext(notifications)).payload == b"4"  # 2 and 3 are gone
        request.observation.cancel()
    finally:
        await context.shutdown()


async def test_every_notification_reaches_a_busy_consumer(tx: Transmitter, peer: Peer) -> None:
    stream, request, addr = await registered(tx, peer)
    for sequence in (6, 7, 8):
        await acked(peer, note(peer, addr, request.token, sequence, b"%d" % sequence))
    assert [(await anext(stream)).payload for _ in range(3)] == [b"6", b"7", b"8"]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_notification_without_observe_or_with_an_error_ends_it(
    tx: Transmitter, peer: Peer
) -> None:
    stream, request, addr = await registered(tx, peer)
    await acked(peer, note(peer, addr, request.token, 6, b"6"))
    await acked(peer, note(peer, addr, request.token, None, b"bye"))
    assert [r.payload async for r in stream] == [b"6", b"bye"]
    stream, request, addr = await registered(tx, peer)
    await acked(peer, note(peer, addr, request.token, 9, b"gone", code=Code.NOT_FOUND))
    assert [r.code async for r in stream] == ["4.04"]


async def test_a_notification_with_an_unknown_critical_option_fails_the_observation(
    tx: Transmitter, peer: Peer
) -> None:
    """aiocoap has ACKed it already; failing the observation makes the caller re-register and
    re-read the full list rather than act on a notification it cannot understand."""
    stream, request, addr = await registered(tx, peer)
    message = aiocoap.Message(code=Code.CONTENT, payload=b"?", observe=6)
    message.opt.add_option(OpaqueOption(UNKNOWN_CRITICAL, b"\x01"))
    message.mtype, message.mid, message.token = CON, 0x7FFF, request.token
    assert peer.transport is not None
    peer.transport.sendto(message.encode(), addr)
    await acked(peer, 0x7FFF)
    with pytest.raises(UpstreamError, match="unknown critical option"):
        await anext(stream)


async def test_a_refused_registration_is_yielded_then_ends(tx: Transmitter, peer: Peer) -> None:
    stream = tx.observe("/v1/notify")
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, b"plain")  # no Observe
    assert await first == CoapReply("2.05", b"plain", None)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_large_notification_is_completed_with_plain_gets(
    tx: Transmitter, peer: Peer
) -> None:
    stream, request, addr = await registered(tx, peer)
    first_block = note(peer, addr, request.token, 6, BODY[:1024], etag=b"n1", block2=(0, True, 6))
    await acked(peer, first_block)
    pending = asyncio.ensure_future(anext(stream))
    for num in (1, 2):
        fetch, addr = await peer.receive()
        assert fetch.opt.observe is None
        assert fetch.opt.uri_path == ("v1", "notify")
        assert fetch.opt.uri_query == ("action=get_sessions",)
        assert tuple(fetch.opt.block2) == (num, False, 6)
        assert fetch.token != request.token
        serve_block(peer, fetch, addr, BODY, b"n1")
    assert await pending == CoapReply("2.05", BODY, b"n1", observe=6)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_closing_the_stream_deregisters(tx: Transmitter, peer: Peer) -> None:
    stream, request, addr = await registered(tx, peer)
    await stream.aclose()  # type: ignore[attr-defined]
    deregister, again = await peer.receive()
    assert again == addr
    assert (deregister.mtype, deregister.code, deregister.opt.observe) == (NON, Code.GET, 1)
    assert deregister.token == request.token
    assert deregister.opt.uri_path == ("v1", "notify")
    assert deregister.opt.uri_query == ("action=get_sessions",)
    await asyncio.sleep(0.05)
    note(peer, addr, request.token, 6, b"late")  # the socket is closed: nothing answers
    await peer.nothing(0.1)


async def test_an_unconsumed_backlog_fails_the_observation(
    tx: Transmitter, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap, "OBSERVE_BACKLOG", 3)
    stream, request, addr = await registered(tx, peer)
    for sequence in range(6, 10):  # the fourth is one too many (ACKed: aiocoap cannot refuse)
        await acked(peer, note(peer, addr, request.token, sequence, b"%d" % sequence))
    assert [(await anext(stream)).payload for _ in range(3)] == [b"6", b"7", b"8"]
    with pytest.raises(UpstreamError, match="more than 3 notifications"):
        await anext(stream)


async def test_silence_ends_the_observation_after_idle(tx: Transmitter, peer: Peer) -> None:
    stream, request, addr = await registered(tx, peer, idle=0.3)
    await asyncio.sleep(0.2)
    await acked(peer, note(peer, addr, request.token, 6, b"6"))  # activity restarts the clock
    assert (await anext(stream)).payload == b"6"
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="no notification"):
        await anext(stream)
    assert 0.2 < time.monotonic() - started < 0.5


async def test_a_ping_does_not_disturb_the_observation(tx: Transmitter, peer: Peer) -> None:
    stream, request, addr = await registered(tx, peer)
    ping = peer.send(addr, CON, Code.EMPTY)  # CoAP ping: answered with an RST (§4.3)
    reset, _ = await peer.receive()
    assert (reset.mtype, reset.mid) == (RST, ping)
    await acked(peer, note(peer, addr, request.token, 6, b"6"))
    assert (await anext(stream)).payload == b"6"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_registration_answered_separately(tx: Transmitter, peer: Peer) -> None:
    stream = tx.observe("/v1/notify")
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    peer.send(addr, ACK, Code.EMPTY, request.mid)
    mid = peer.send(addr, CON, Code.CONTENT, None, request.token, b"1", observe=1)
    await acked(peer, mid)
    assert (await first).payload == b"1"
    await acked(peer, note(peer, addr, request.token, 2, b"2"))
    assert (await anext(stream)).payload == b"2"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_sequence_numbers_wrap_around(tx: Transmitter, peer: Peer) -> None:
    stream = tx.observe("/v1/notify")
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    newest = (1 << 24) - 2
    peer.send(addr, ACK, Code.CONTENT, request.mid, request.token, b"a", observe=newest)
    await first
    # RFC 7641 §3.4: 1 is newer than 2^24 - 2 (it wrapped); 2^24 - 3 is older.
    await acked(peer, note(peer, addr, request.token, newest - 1, b"older"))
    await acked(peer, note(peer, addr, request.token, 1, b"wrapped"))
    assert (await anext(stream)).payload == b"wrapped"
    await stream.aclose()  # type: ignore[attr-defined]


# -- shutting a context down ---------------------------------------------------------------


def loop_errors() -> list[BaseException | None]:
    """Exceptions the event loop reports from now on (callbacks that raised)."""
    seen: list[BaseException | None] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _, ctx: seen.append(ctx.get("exception"))
    )
    return seen


def burst(peer: Peer, addr: Address, count: int = 20) -> None:
    """Datagrams queued at the client's socket: answers to nothing, read one per loop turn."""
    for _ in range(count):
        peer.send(addr, NON, Code.CONTENT, None, b"zz", b"x")


async def test_aiocoap_shutdown_reads_a_datagram_after_unhooking_its_message_layer(
    peer: Peer,
) -> None:
    """The library limit behind `coap._shutdown`: a datagram arriving while a context shuts
    down raises AttributeError in the loop's reader callback (logged with a traceback)."""
    errors = loop_errors()
    context = await aiocoap.Context.create_client_context(transports=["simple6"])
    message = aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{peer.port}/x")
    request = context.request(message, handle_blockwise=False)
    _, addr = await peer.receive()
    burst(peer, addr)
    await asyncio.sleep(0)
    await context.shutdown()
    await asyncio.sleep(0.01)
    with pytest.raises(aiocoap.error.LibraryShutdown):
        await request.response
    assert any(isinstance(error, AttributeError) for error in errors)


async def test_closing_while_the_device_talks_raises_nothing_in_the_loop(
    tx: Transmitter, peer: Peer
) -> None:
    errors = loop_errors()
    stream, _, addr = await registered(tx, peer)
    burst(peer, addr)
    await asyncio.sleep(0)
    await stream.aclose()  # type: ignore[attr-defined]
    task = spawn(tx)
    request, addr = await peer.receive()
    while request.opt.observe is not None:  # the deregistration
        request, addr = await peer.receive()
    burst(peer, addr)
    peer.send(addr, RST, Code.EMPTY, request.mid)  # the request fails: its context is retired
    with pytest.raises(UpstreamError):
        await task
    await tx.close()
    await asyncio.sleep(0.01)
    assert errors == []


# -- ICMP ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_aiocoap_udp6_stops_reading_after_icmp_on_uvloop() -> None:
    """The library limit behind simple6: under uvloop, aiocoap's default udp6 transport reads
    nothing more once an ICMP error came in, so a transmitter that is back stays unreachable."""

    async def scenario(transports: list[str]) -> tuple[int, bytes | None]:
        port = free_port()
        context = await aiocoap.Context.create_client_context(transports=transports)
        transport, peer = None, None
        try:
            with pytest.raises(aiocoap.error.NetworkError):  # ICMP port unreachable
                await context.request(
                    aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/x")
                ).response
            transport, peer = await open_peer(port)
            pending = context.request(
                aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/x")
            )
            request, addr = await peer.receive()
            peer.answer(request, addr, b"back")
            try:
                async with asyncio.timeout(1):
                    return 1, (await pending.response).payload
            except TimeoutError:
                return 1, None
        finally:
            if transport is not None:
                transport.close()
            await context.shutdown()

    assert uvloop.run(scenario(["udp6"])) == (1, None)  # answered, never read
    assert uvloop.run(scenario(["simple6"])) == (1, b"back")


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_icmp_fails_the_exchange_and_the_socket_is_replaced(
    run: Callable[[Coroutine[Any, Any, None]], None], fast_retransmit: float
) -> None:
    async def scenario() -> None:
        transport, peer = await open_peer()
        port = peer.port
        tx = Transmitter(f"coap://127.0.0.1:{port}", timeout=2.0)
        try:
            task = spawn(tx)
            _, first = await peer.receive()
            transport.close()  # the device goes away mid-exchange: the retransmission meets ICMP
            started = time.monotonic()
            with pytest.raises(UpstreamUnavailable, match="unreachable"):
                await task
            assert time.monotonic() - started < 0.5
            transport, peer = await open_peer(port)  # and comes back
            task = spawn(tx)
            request, second = await peer.receive()
            assert second != first
            peer.answer(request, second)
            assert (await task).ok
            assert tx.endpoints_used == 2
        finally:
            transport.close()
            await tx.close()

    run(scenario())
