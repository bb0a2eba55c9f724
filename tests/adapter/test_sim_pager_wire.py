"""The simulator's CoAP server on the wire (RFC 7252/7641/7959), driven by raw datagrams.

What a library client would hide: duplicate CONs, separate responses and their retransmission,
RSTs, malformed datagrams, block-wise continuations, and Observe registrations ending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest

from bridge import coapwire
from bridge.coapwire import ACK, CON, NON, RST, Message
from bridge.sim import coap_reliable
from bridge.sim.pager import PagerSimulator

SESSIONS = [(coapwire.URI_PATH, b"v1"), (coapwire.URI_PATH, b"sessions")]
NOTIFY = [(coapwire.URI_PATH, b"v1"), (coapwire.URI_PATH, b"notify")]
JSON = (coapwire.CONTENT_FORMAT, coapwire.uint(50))


class Raw(asyncio.DatagramProtocol):
    """A bare UDP peer of the simulator: sends what it is told, keeps what arrives, decoded."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(coapwire.decode(data))

    def send(
        self,
        mtype: int,
        code: int,
        mid: int,
        token: bytes = b"",
        options: Sequence[tuple[int, bytes]] = (),
        payload: bytes = b"",
    ) -> None:
        self.send_bytes(coapwire.encode(mtype, code, mid, token, options, payload))

    def send_bytes(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def next(self, timeout: float = 1.0) -> Message:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def nothing(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.next(within)


@pytest.fixture
async def raw(sim: PagerSimulator) -> AsyncIterator[Raw]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", sim.port))
    peer.transport = transport
    try:
        yield peer
    finally:
        transport.close()


def body(message: Message) -> dict[str, object]:
    decoded: dict[str, object] = msgspec.json.decode(message.payload)
    return decoded


async def test_con_is_answered_piggybacked_with_mid_and_token(raw: Raw) -> None:
    raw.send(CON, coapwire.GET, 0x1234, b"tk", SESSIONS)
    answer = await raw.next()
    assert (answer.mtype, answer.code, answer.mid, answer.token) == (ACK, 69, 0x1234, b"tk")
    assert answer.option(coapwire.CONTENT_FORMAT) == coapwire.uint(50)
    assert answer.option(coapwire.ETAG)
    assert body(answer)["sessions"] == []


async def test_non_is_answered_with_non(raw: Raw) -> None:
    raw.send(NON, coapwire.GET, 7, b"n1", SESSIONS)
    answer = await raw.next()
    assert (answer.mtype, answer.code, answer.token) == (NON, 69, b"n1")


async def test_duplicate_con_is_answered_from_cache_and_processed_once(
    raw: Raw, sim: PagerSimulator
) -> None:
    create = coapwire.encode(CON, coapwire.POST, 99, b"d", [*SESSIONS, JSON], b'{"number":7}')
    raw.send_bytes(create)
    first = await raw.next()
    raw.send_bytes(create)  # as if our ACK had been lost
    again = await raw.next()
    assert first == again
    assert first.code == 65  # 2.01, not the 4.00 "already has an active session" of a rerun
    assert list(sim.received) == [(7, "POST", None)]
    assert sim._server.duplicates == 1
    raw.send(CON, coapwire.POST, 100, b"e", [*SESSIONS, JSON], b'{"number":7}')
    assert (await raw.next()).code == 128  # a new MID is a new request


async def test_latency_gives_empty_ack_then_separate_con_response(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap_reliable, "ACK_TIMEOUT", 0.1)
    sim.latency = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw.send(CON, coapwire.GET, 5, b"sep", SESSIONS)
    empty = await raw.next()
    assert (empty.mtype, empty.code, empty.mid, empty.token) == (ACK, 0, 5, b"")
    assert loop.time() - started < 0.15
    separate = await raw.next()
    assert loop.time() - started >= 0.2
    assert (separate.mtype, separate.code, separate.token) == (CON, 69, b"sep")
    assert separate.mid != 5
    # Not acknowledged: the same response again after ACK_TIMEOUT (here 0.1-0.15 s) ...
    again = await raw.next()
    assert again == separate
    raw.send(ACK, 0, separate.mid)
    # ... and never again once acknowledged.
    await raw.nothing(0.5)


async def test_duplicate_con_while_delayed_gets_the_empty_ack_again(
    raw: Raw, sim: PagerSimulator
) -> None:
    sim.latency = 0.2
    create = coapwire.encode(CON, coapwire.POST, 8, b"s", [*SESSIONS, JSON], b'{"number":9}')
    raw.send_bytes(create)
    raw.send_bytes(create)
    assert [(await raw.next()).code for _ in range(3)] == [0, 0, 65]
    assert list(sim.received) == [(9, "POST", None)]


async def test_unknown_path_bad_option_ping_and_garbage(raw: Raw) -> None:
    raw.send(CON, coapwire.GET, 1, b"a", [(coapwire.URI_PATH, b"nope")])
    assert (await raw.next()).code == 132  # 4.04
    raw.send(CON, coapwire.GET, 2, b"b", [(coapwire.IF_MATCH, b"x"), *SESSIONS])
    assert (await raw.next()).code == 130  # 4.02: an unrecognised critical option
    raw.send(CON, 0, 3)  # CoAP ping
    pong = await raw.next()
    assert (pong.mtype, pong.mid) == (RST, 3)
    raw.send_bytes(bytes((0x48, 1, 0, 4)))  # CON announcing an 8-byte token it lacks
    rejected = await raw.next()
    assert (rejected.mtype, rejected.mid) == (RST, 4)
    raw.send_bytes(b"\x00garbage")  # not even a CoAP header: ignored
    raw.send_bytes(bytes((0x58, 1, 0, 5)))  # a malformed NON: ignored
    await raw.nothing()


async def test_long_list_is_block_wise_and_rendered_once(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(1, 101):
        sim.console_create(number, label="guest")
    renders = 0
    sessions = sim.device.sessions

    def counting(number: int | None = None) -> list[object]:
        nonlocal renders
        renders += 1
        return list(sessions(number))

    monkeypatch.setattr(sim.device, "sessions", counting)
    raw.send(CON, coapwire.GET, 1, b"b0", SESSIONS)
    first = await raw.next()
    block2 = first.option(coapwire.BLOCK2)
    assert block2 is not None
    assert coapwire.parse_block(block2) == (0, True, 6)
    size = coapwire.to_uint(first.option(coapwire.SIZE2) or b"")
    payload, num = first.payload, 1
    while True:  # a smaller size may be asked for at any point (RFC 7959 §2.4)
        raw.send(
            CON,
            coapwire.GET,
            1 + num,
            b"bn",
            [*SESSIONS, (coapwire.BLOCK2, coapwire.block(num, False, 6))],
        )
        answer = await raw.next()
        assert answer.option(coapwire.ETAG) == first.option(coapwire.ETAG)
        payload += answer.payload
        more = coapwire.parse_block(answer.option(coapwire.BLOCK2) or b"")[1]
        if not more:
            break
        num += 1
    assert len(payload) == size
    assert len(msgspec.json.decode(payload)["sessions"]) == 100
    assert renders == 1


async def test_observer_answering_rst_is_dropped(raw: Raw, sim: PagerSimulator) -> None:
    raw.send(CON, coapwire.GET, 1, b"obs", [(coapwire.OBSERVE, b""), *NOTIFY])
    first = await raw.next()
    assert (first.mtype, first.code, first.option(coapwire.OBSERVE)) == (ACK, 69, b"")
    assert sim.observers == 1
    sim.console_create(3)
    note = await raw.next()
    assert (note.mtype, note.token, note.option(coapwire.OBSERVE)) == (CON, b"obs", b"\x01")
    raw.send(RST, 0, note.mid)
    async with asyncio.timeout(1):
        while sim.observers:  # noqa: ASYNC110 - the count is all the simulator exposes
            await asyncio.sleep(0.01)
    sim.console_create(4)
    await raw.nothing()


async def test_observer_that_never_acks_is_dropped_after_retransmissions(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coap_reliable, "ACK_TIMEOUT", 0.02)
    raw.send(CON, coapwire.GET, 1, b"deaf", [(coapwire.OBSERVE, b""), *NOTIFY])
    await raw.next()
    sim.console_create(3)
    copies = [await raw.next() for _ in range(1 + coapwire.MAX_RETRANSMIT)]
    assert {(m.mid, m.option(coapwire.OBSERVE)) for m in copies} == {(copies[0].mid, b"\x01")}
    async with asyncio.timeout(2):
        while sim.observers:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("deregister", [[(coapwire.OBSERVE, b"\x01")], []])
async def test_get_with_the_same_token_deregisters(
    raw: Raw, sim: PagerSimulator, deregister: list[tuple[int, bytes]]
) -> None:
    raw.send(CON, coapwire.GET, 1, b"tok", [(coapwire.OBSERVE, b""), *NOTIFY])
    await raw.next()
    assert sim.observers == 1
    raw.send(CON, coapwire.GET, 2, b"tok", [*deregister, *NOTIFY])
    answer = await raw.next()
    assert (answer.code, answer.option(coapwire.OBSERVE)) == (69, None)
    assert sim.observers == 0


async def test_silent_answers_nothing_and_forgets_observers(raw: Raw, sim: PagerSimulator) -> None:
    raw.send(CON, coapwire.GET, 1, b"o", [(coapwire.OBSERVE, b""), *NOTIFY])
    await raw.next()
    await sim.set_silent(True)
    assert sim.observers == 0
    raw.send(CON, coapwire.GET, 2, b"g", SESSIONS)
    await raw.nothing()
    await sim.set_silent(False)
    raw.send(CON, coapwire.GET, 3, b"g", SESSIONS)
    assert (await raw.next()).code == 69


async def test_observer_whose_socket_closed_is_dropped_on_the_icmp_error(
    sim: PagerSimulator,
) -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", sim.port))
    peer.transport = transport
    peer.send(CON, coapwire.GET, 1, b"gone", [(coapwire.OBSERVE, b""), *NOTIFY])
    await peer.next()
    transport.close()  # the client goes away without a word: its port answers ICMP
    await asyncio.sleep(0.05)  # (the transport closes its socket on the next loop iteration)
    sim.console_create(3)
    async with asyncio.timeout(1):  # not the ~90 s of unanswered retransmissions
        while sim.observers:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert not sim._server._confirmables


async def test_a_change_is_answered_before_it_is_notified(raw: Raw, sim: PagerSimulator) -> None:
    raw.send(CON, coapwire.GET, 1, b"obs", [(coapwire.OBSERVE, b""), *NOTIFY])
    await raw.next()
    raw.send(CON, coapwire.POST, 2, b"mk", [*SESSIONS, JSON], b'{"number":5}')
    answer, note = await raw.next(), await raw.next()
    assert (answer.mtype, answer.mid, answer.code) == (ACK, 2, 65)
    assert (note.mtype, note.token, note.option(coapwire.OBSERVE)) == (CON, b"obs", b"\x01")
    assert note.payload == answer.payload  # the reply's envelope, encoded once
    assert sim.observers == 1
