"""`Transmitter` against a scripted CoAP peer: the message layer, byte by byte (RFC 7252/7641/7959).

The peer is a bare UDP socket speaking through `bridge.coapwire`; each test plays the device's
side of one exchange and checks what the client sent and returned. Retransmission timing runs
with ACK_TIMEOUT shortened, so the RFC's doubling is visible in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from bridge import coap, coapendpoint, coapwire
from bridge.coap import CoapReply, Transmitter
from bridge.coapwire import (
    ACK,
    BLOCK2,
    CON,
    CONTENT_FORMAT,
    ETAG,
    NON,
    OBSERVE,
    RST,
    URI_PATH,
    URI_QUERY,
    Message,
    block,
    parse_block,
    uint,
)
from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

Address = tuple[str, int]
SESSIONS = "/v1/sessions"


class Peer(asyncio.DatagramProtocol):
    """The device's side: records every datagram, sends whatever the test scripts."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Message, Address, float]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._mid = 0x7000

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queue.put_nowait((coapwire.decode(data), addr, time.monotonic()))

    async def receive(self, within: float = 2.0) -> tuple[Message, Address]:
        message, addr, _ = await self.timed(within)
        return message, addr

    async def timed(self, within: float = 2.0) -> tuple[Message, Address, float]:
        async with asyncio.timeout(within):
            return await self.queue.get()

    async def nothing(self, within: float) -> None:
        with pytest.raises(TimeoutError):
            await self.receive(within)

    def send(
        self,
        addr: Address,
        mtype: int,
        code: int,
        mid: int | None = None,
        token: bytes = b"",
        options: Sequence[tuple[int, bytes]] = (),
        payload: bytes = b"",
    ) -> int:
        """Send one message (a fresh peer MID unless given); returns the MID used."""
        if mid is None:
            self._mid += 1
            mid = self._mid
        assert self.transport is not None
        self.transport.sendto(coapwire.encode(mtype, code, mid, token, options, payload), addr)
        return mid

    def answer(self, request: Message, addr: Address, payload: bytes = b"{}") -> None:
        """A piggybacked 2.05 for `request`."""
        self.send(addr, ACK, coapwire.CONTENT, request.mid, request.token, (), payload)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    protocol.port = transport.get_extra_info("sockname")[1]
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
    monkeypatch.setattr(coapendpoint, "ACK_TIMEOUT", 0.02)
    return 0.02


def spawn(tx: Transmitter, method: str = "GET", **kwargs: object) -> asyncio.Task[CoapReply]:
    return asyncio.create_task(tx.request(method, SESSIONS, **kwargs))  # type: ignore[arg-type]


# -- requests ------------------------------------------------------------------------------


async def test_requests_are_confirmable_with_fresh_tokens_and_counting_mids(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx, query={"number": 5})
    first, addr = await peer.receive()
    assert (first.mtype, first.code) == (CON, coapwire.GET)
    assert first.options == [(URI_PATH, b"v1"), (URI_PATH, b"sessions"), (URI_QUERY, b"number=5")]
    assert len(first.token) == 4
    peer.answer(first, addr, b'{"a":1}')
    assert await task == CoapReply("2.05", b'{"a":1}', None)
    task = spawn(tx)
    second, addr = await peer.receive()
    assert second.mid == (first.mid + 1) & 0xFFFF
    assert second.token != first.token
    peer.answer(second, addr)
    await task


async def test_a_body_carries_content_format_json_and_an_etag_goes_first(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx, "PUT", query={"number": 7}, body=b'{"action":"page"}', etag=b"\x01\x02")
    request, addr = await peer.receive()
    assert request.code == coapwire.PUT
    assert request.options == [
        (ETAG, b"\x01\x02"),
        (URI_PATH, b"v1"),
        (URI_PATH, b"sessions"),
        (CONTENT_FORMAT, uint(50)),
        (URI_QUERY, b"number=7"),
    ]
    assert request.payload == b'{"action":"page"}'
    peer.send(addr, ACK, coapwire.CHANGED, request.mid, request.token, [(ETAG, b"\x09")])
    assert await task == CoapReply("2.04", b"", b"\x09")


async def test_a_lost_request_is_retransmitted_identically(
    tx: Transmitter, peer: Peer, fast_retransmit: float
) -> None:
    task = spawn(tx)
    original, _, sent = await peer.timed()
    again, addr, resent = await peer.timed()
    assert (again.mid, again.token, again.options) == (
        original.mid,
        original.token,
        original.options,
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
    assert len(times) == 1 + coapwire.MAX_RETRANSMIT
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


async def test_separate_response_is_acknowledged_and_its_duplicate_too(
    tx: Transmitter, peer: Peer, fast_retransmit: float
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, ACK, 0, request.mid)  # empty ACK: "the answer comes later"
    await peer.nothing(fast_retransmit * 4)  # acknowledged: no retransmission
    mid = peer.send(addr, CON, coapwire.CONTENT, None, request.token, (), b"late")
    ack, _ = await peer.receive()
    assert (ack.mtype, ack.code, ack.mid, ack.token) == (ACK, 0, mid, b"")
    assert await task == CoapReply("2.05", b"late", None)
    # Our ACK was lost, say: the device sends the response again. It is ACKed again, not reset.
    peer.send(addr, CON, coapwire.CONTENT, mid, request.token, (), b"late")
    again, _ = await peer.receive()
    assert (again.mtype, again.mid) == (ACK, mid)


async def test_separate_response_before_the_ack_and_non_confirmable(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, NON, coapwire.CONTENT, None, request.token, (), b"non")
    assert (await task).payload == b"non"
    await peer.nothing(0.1)  # a NON is not acknowledged


async def test_reset_is_an_upstream_error_and_the_endpoint_is_replaced(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, RST, 0, request.mid)
    with pytest.raises(UpstreamError, match="RST") as caught:
        await task
    assert type(caught.value) is UpstreamError
    task = spawn(tx)
    request, second = await peer.receive()
    assert second != addr  # a fresh socket
    peer.answer(request, second)
    await task
    assert tx.endpoints_used == 2


async def test_an_ack_echoing_another_token_is_refused(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.send(addr, ACK, coapwire.CONTENT, request.mid, b"\xff" * 4, (), b"x")
    with pytest.raises(UpstreamError, match="another token"):
        await task


async def test_unexpected_confirmables_are_reset(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    peer.answer(request, addr)
    await task
    unknown = peer.send(addr, CON, coapwire.CONTENT, None, b"nope", (), b"?")
    ping = peer.send(addr, CON, 0)
    assert peer.transport is not None
    peer.transport.sendto(b"\x40\x45\x12\x34\xf0", addr)  # CON with a reserved option nibble
    replies = [await peer.receive() for _ in range(3)]
    assert [(m.mtype, m.mid) for m, _ in replies] == [(RST, unknown), (RST, ping), (RST, 0x1234)]


# -- Block2 --------------------------------------------------------------------------------

BODY = bytes(range(256)) * 10 + b"tail"  # 2,564 bytes: three blocks of 1,024


def serve_block(
    peer: Peer, request: Message, addr: Address, body: bytes, etag: bytes, szx: int = 6
) -> None:
    value = request.option(BLOCK2)
    num = parse_block(value)[0] if value is not None else 0
    size = 16 << szx
    chunk = body[num * size : (num + 1) * size]
    more = (num + 1) * size < len(body)
    options = [(ETAG, etag), (BLOCK2, block(num, more, szx))]
    peer.send(addr, ACK, coapwire.CONTENT, request.mid, request.token, options, chunk)


async def test_a_block_wise_answer_is_fetched_whole(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx, query={"number": 3})
    tokens, mids = set(), set()
    for num in range(3):
        request, addr = await peer.receive()
        tokens.add(request.token)
        mids.add(request.mid)
        expected = [(URI_PATH, b"v1"), (URI_PATH, b"sessions"), (URI_QUERY, b"number=3")]
        if num:
            expected.append((BLOCK2, block(num, False, 6)))
        assert request.options == expected
        serve_block(peer, request, addr, BODY, b"e1")
    assert await task == CoapReply("2.05", BODY, b"e1")
    assert len(tokens) == len(mids) == 3


async def test_the_device_may_pick_a_smaller_block_size(tx: Transmitter, peer: Peer) -> None:
    task = spawn(tx)
    body = b"x" * 100
    for num in range(2):
        request, addr = await peer.receive()
        if num:
            assert request.option(BLOCK2) == block(1, False, 2)
        serve_block(peer, request, addr, body, b"e", szx=2)  # 64-byte blocks
    assert (await task).payload == body


async def test_a_representation_changing_midway_is_read_again_once(
    tx: Transmitter, peer: Peer
) -> None:
    task = spawn(tx)
    request, addr = await peer.receive()
    serve_block(peer, request, addr, BODY, b"old")
    request, addr = await peer.receive()
    serve_block(peer, request, addr, b"N" * 2000, b"new")  # changed under us
    request, addr = await peer.receive()
    assert request.option(BLOCK2) == block(0, False, 6)  # starts over
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
    assert request.code == coapwire.POST
    assert request.payload == b"{}"  # the same request, for the next block
    serve_block(peer, request, addr, BODY, b"2")
    with pytest.raises(UpstreamError, match="changed midway"):
        await task
    await peer.nothing(0.1)


# -- Observe -------------------------------------------------------------------------------


def note(
    peer: Peer,
    addr: Address,
    token: bytes,
    sequence: int | None,
    payload: bytes,
    *,
    mid: int | None = None,
    code: int = coapwire.CONTENT,
    extra: Sequence[tuple[int, bytes]] = (),
) -> int:
    options = [*extra] if sequence is None else [(OBSERVE, uint(sequence)), *extra]
    return peer.send(addr, CON, code, mid, token, options, payload)


async def registered(
    tx: Transmitter, peer: Peer, **kwargs: float
) -> tuple[AsyncIterator[CoapReply], Message, Address]:
    stream = tx.observe("/v1/notify", query={"action": "get_sessions"}, **kwargs)
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    assert request.option(OBSERVE) == b""  # Observe: 0 (register)
    peer.send(addr, ACK, coapwire.CONTENT, request.mid, request.token, [(OBSERVE, uint(5))], b"0")
    assert (await first).payload == b"0"
    return stream, request, addr


async def acked(peer: Peer, mid: int) -> None:
    ack, _ = await peer.receive()
    assert (ack.mtype, ack.mid) == (ACK, mid)


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


async def test_a_notification_without_observe_or_with_an_error_ends_it(
    tx: Transmitter, peer: Peer
) -> None:
    stream, request, addr = await registered(tx, peer)
    await acked(peer, note(peer, addr, request.token, 6, b"6"))
    await acked(peer, note(peer, addr, request.token, None, b"bye"))
    assert [r.payload async for r in stream] == [b"6", b"bye"]
    stream, request, addr = await registered(tx, peer)
    await acked(peer, note(peer, addr, request.token, 9, b"gone", code=coapwire.NOT_FOUND))
    assert [r.code async for r in stream] == ["4.04"]


async def test_a_large_notification_is_completed_with_plain_gets(
    tx: Transmitter, peer: Peer
) -> None:
    stream, request, addr = await registered(tx, peer)
    first_block = [(ETAG, b"n1"), (BLOCK2, block(0, True, 6))]
    await acked(peer, note(peer, addr, request.token, 6, BODY[:1024], extra=first_block))
    pending = asyncio.ensure_future(anext(stream))
    for num in (1, 2):
        fetch, addr = await peer.receive()
        assert fetch.option(OBSERVE) is None
        assert fetch.options_of(URI_PATH) == [b"v1", b"notify"]
        assert fetch.option(BLOCK2) == block(num, False, 6)
        assert fetch.token != request.token
        serve_block(peer, fetch, addr, BODY, b"n1")
    assert await pending == CoapReply("2.05", BODY, b"n1")
    await stream.aclose()  # type: ignore[attr-defined]


async def test_closing_the_stream_deregisters(tx: Transmitter, peer: Peer) -> None:
    stream, request, addr = await registered(tx, peer)
    await stream.aclose()  # type: ignore[attr-defined]
    deregister, _ = await peer.receive()
    assert deregister.option(OBSERVE) == uint(1)
    assert deregister.token == request.token
    assert deregister.options_of(URI_QUERY) == [b"action=get_sessions"]
    note(peer, addr, request.token, 6, b"late")  # the socket is closed: nothing answers
    await peer.nothing(0.1)


async def test_an_unconsumed_backlog_fails_the_observation(
    tx: Transmitter, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap, "OBSERVE_BACKLOG", 3)
    stream, request, addr = await registered(tx, peer)
    for sequence in range(6, 9):
        await acked(peer, note(peer, addr, request.token, sequence, b"%d" % sequence))
    overflow = note(peer, addr, request.token, 9, b"9")
    reset, _ = await peer.receive()
    assert (reset.mtype, reset.mid) == (RST, overflow)
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


async def test_registration_answered_separately(tx: Transmitter, peer: Peer) -> None:
    stream = tx.observe("/v1/notify")
    first = asyncio.ensure_future(anext(stream))
    request, addr = await peer.receive()
    peer.send(addr, ACK, 0, request.mid)
    mid = peer.send(addr, CON, coapwire.CONTENT, None, request.token, [(OBSERVE, uint(1))], b"1")
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
    options = [(OBSERVE, uint(newest))]
    peer.send(addr, ACK, coapwire.CONTENT, request.mid, request.token, options, b"a")
    await first
    # RFC 7641 §3.4: 1 is newer than 2^24 - 2 (it wrapped); 2^24 - 3 is older.
    await acked(peer, note(peer, addr, request.token, newest - 1, b"older"))
    await acked(peer, note(peer, addr, request.token, 1, b"wrapped"))
    assert (await anext(stream)).payload == b"wrapped"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_icmp_fails_the_exchange_and_the_socket_is_replaced(tx: Transmitter) -> None:
    await tx.start()
    task = spawn(tx)
    await asyncio.sleep(0)
    endpoint = tx._current
    assert endpoint is not None
    endpoint.error_received(ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await task
    assert endpoint.closed
