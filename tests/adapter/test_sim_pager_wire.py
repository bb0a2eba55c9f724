"""The simulator on the wire (RFC 7252/7641/7959), driven by a scripted peer.

What a library client would hide: duplicate CONs, separate responses and their retransmission,
RSTs, malformed datagrams, block-wise continuations, Observe registrations ending, silence. The
peer builds and reads every datagram with aiocoap's own `Message.encode()` / `Message.decode()`;
the server on the other side is aiocoap's too, so these tests pin what the library does for the
simulator (and the few things the simulator adds: refused critical options, block-wise
notifications held in order).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiocoap
import aiocoap.resource
import msgspec
import pytest
import uvloop
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from bridge.sim.pager import server as pager
from bridge.sim.pager.server import PagerSimulator
from tests.support import started_sim

CON, NON, ACK, RST = Type.CON, Type.NON, Type.ACK, Type.RST
SESSIONS = ("v1", "sessions")
NOTIFY = ("v1", "notify")


def datagram(
    mtype: Type, code: Code, mid: int, token: bytes = b"", payload: bytes = b"", **options: Any
) -> bytes:
    """One CoAP datagram, encoded by aiocoap (`options` as `aiocoap.Message` takes them)."""
    message = aiocoap.Message(code=code, payload=payload, **options)
    message.mtype = mtype
    message.mid = mid
    message.token = token
    data: bytes = message.encode()
    return data


def block(num: int, szx: int = 6) -> Any:
    return BlockOption.BlockwiseTuple(num, False, szx)


class Raw(asyncio.DatagramProtocol):
    """A bare UDP peer of the simulator: sends what it is told, keeps what arrives."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.errors: list[Exception] = []  # ICMP errors (port unreachable) about our datagrams
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def send(
        self,
        mtype: Type,
        code: Code,
        mid: int,
        token: bytes = b"",
        payload: bytes = b"",
        **options: Any,
    ) -> None:
        self.send_bytes(datagram(mtype, code, mid, token, payload, **options))

    def send_bytes(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def next_bytes(self, timeout: float = 1.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def next(self, timeout: float = 1.0) -> Any:
        return aiocoap.Message.decode(await self.next_bytes(timeout))

    async def nothing(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.next(within)


async def connect(server: PagerSimulator | int) -> tuple[asyncio.DatagramTransport, Raw]:
    """A `Raw` peer of a simulator (or of whatever serves that port on 127.0.0.1)."""
    port = server if isinstance(server, int) else server.port
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", port))
    peer.transport = transport
    return transport, peer


@pytest.fixture
async def raw(sim: PagerSimulator) -> AsyncIterator[Raw]:
    transport, peer = await connect(sim)
    try:
        yield peer
    finally:
        transport.close()


@pytest.fixture
def fast_retransmissions(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiocoap's ACK_TIMEOUT (2 s by default) at 0.1 s, for the server's own CONs."""
    monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", 0.1)


def body(message: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(message.payload)
    return decoded


async def until_no_observers(sim: PagerSimulator, seconds: float = 2.0) -> None:
    async with asyncio.timeout(seconds):
        while sim.observers:  # noqa: ASYNC110 - the count is all the simulator exposes
            await asyncio.sleep(0.01)


async def register(raw: Raw, sim: PagerSimulator, token: bytes, mid: int = 1) -> Any:
    raw.send(CON, Code.GET, mid, token, uri_path=NOTIFY, observe=0)
    first = await raw.next()
    assert (first.mtype, first.code, first.opt.observe) == (ACK, Code.CONTENT, 0)
    assert sim.observers == 1
    return first


async def test_con_is_answered_piggybacked_with_mid_and_token(raw: Raw) -> None:
    raw.send(CON, Code.GET, 0x1234, b"tk", uri_path=SESSIONS)
    answer = await raw.next()
    assert (answer.mtype, answer.code, answer.mid, answer.token) == (
        ACK,
        Code.CONTENT,
        0x1234,
        b"tk",
    )
    assert answer.opt.content_format == 50
    assert answer.opt.etag
    assert body(answer)["sessions"] == []


async def test_non_is_answered_with_non(raw: Raw) -> None:
    raw.send(NON, Code.GET, 7, b"n1", uri_path=SESSIONS)
    answer = await raw.next()
    assert (answer.mtype, answer.code, answer.token) == (NON, Code.CONTENT, b"n1")


async def test_duplicate_con_is_answered_from_cache_and_processed_once(
    raw: Raw, sim: PagerSimulator
) -> None:
    create = datagram(
        CON, Code.POST, 99, b"d", b'{"number":7}', uri_path=SESSIONS, content_format=50
    )
    raw.send_bytes(create)
    first = await raw.next_bytes()
    raw.send_bytes(create)  # as if our ACK had been lost
    again = await raw.next_bytes()
    assert first == again  # the same datagram, from aiocoap's deduplication cache
    assert aiocoap.Message.decode(first).code == Code.CREATED  # not the 4.00 of a second run
    assert list(sim.received) == [(7, "POST", None)]
    assert len(sim.device.sessions()) == 1
    raw.send(CON, Code.POST, 100, b"e", b'{"number":7}', uri_path=SESSIONS, content_format=50)
    assert (await raw.next()).code == Code.BAD_REQUEST  # a new MID is a new request


@pytest.mark.usefixtures("fast_retransmissions")
async def test_latency_gives_empty_ack_then_separate_con_response(
    raw: Raw, sim: PagerSimulator
) -> None:
    sim.latency = 0.4
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw.send(CON, Code.GET, 5, b"sep", uri_path=SESSIONS)
    empty = await raw.next()
    # aiocoap acknowledges a request it has not answered after EMPTY_ACK_DELAY (0.1 s).
    assert (empty.mtype, empty.code, empty.mid, empty.token) == (ACK, Code.EMPTY, 5, b"")
    assert loop.time() - started < 0.3
    separate_bytes = await raw.next_bytes()
    separate = aiocoap.Message.decode(separate_bytes)
    assert loop.time() - started >= 0.4
    assert (separate.mtype, separate.code, separate.token) == (CON, Code.CONTENT, b"sep")
    assert separate.mid != 5
    # Not acknowledged: the same response again after ACK_TIMEOUT (here 0.1-0.15 s) ...
    assert await raw.next_bytes() == separate_bytes
    raw.send(ACK, Code.EMPTY, separate.mid)
    # ... and never again once acknowledged.
    await raw.nothing(0.5)


async def test_duplicate_con_while_delayed_gets_the_empty_ack_again(
    raw: Raw, sim: PagerSimulator
) -> None:
    sim.latency = 0.3
    create = datagram(
        CON, Code.POST, 8, b"s", b'{"number":9}', uri_path=SESSIONS, content_format=50
    )
    raw.send_bytes(create)
    raw.send_bytes(create)  # before anything was sent: nothing to repeat yet
    assert (await raw.next()).code == Code.EMPTY
    raw.send_bytes(create)  # after the empty ACK: that ACK again
    assert [(await raw.next()).code for _ in range(2)] == [Code.EMPTY, Code.CREATED]
    assert list(sim.received) == [(9, "POST", None)]


async def test_unknown_path_and_refused_options(raw: Raw) -> None:
    raw.send(CON, Code.GET, 1, b"a", uri_path=("nope",))
    assert (await raw.next()).code == Code.NOT_FOUND
    raw.send(CON, Code.GET, 2, b"b", uri_path=SESSIONS, if_match=[b"x"])
    refused = await raw.next()
    assert (refused.code, refused.payload) == (Code.BAD_OPTION, b"unrecognised critical option 1")
    message = aiocoap.Message(code=Code.GET, uri_path=SESSIONS)
    message.opt.add_option(OptionNumber(2049).create_option(value=b"?"))
    message.mtype, message.mid, message.token = CON, 3, b"c"
    raw.send_bytes(message.encode())
    assert (await raw.next()).code == Code.BAD_OPTION
    message.opt.delete_option(OptionNumber(2049))
    message.opt.add_option(OptionNumber(2048).create_option(value=b"?"))  # elective: ignored
    message.mid = 4
    raw.send_bytes(message.encode())
    assert (await raw.next()).code == Code.CONTENT
    raw.send(CON, Code.GET, 5, b"d", uri_path=SESSIONS, proxy_uri="coap://elsewhere/x")
    assert (await raw.next()).code == Code.PROXYING_NOT_SUPPORTED


async def test_ping_garbage_and_malformed_datagrams(raw: Raw) -> None:
    raw.send(CON, Code.EMPTY, 3)  # CoAP ping
    pong = await raw.next()
    assert (pong.mtype, pong.mid) == (RST, 3)
    raw.send(CON, Code.CONTENT, 4, b"x")  # a response nobody asked for
    assert (await raw.next()).mtype == RST
    raw.send_bytes(b"\x00garbage")  # not CoAP version 1: ignored
    raw.send_bytes(bytes((0x40, 1, 0, 6, 0xD1)))  # an option cut short: ignored
    await raw.nothing()
    # aiocoap reads a header whose token is missing as an empty token (a 4.04: no path).
    raw.send_bytes(bytes((0x48, 1, 0, 7)))
    lenient = await raw.next()
    assert (lenient.mtype, lenient.mid, lenient.code) == (ACK, 7, Code.NOT_FOUND)
    raw.send(CON, Code.GET, 8, b"ok", uri_path=SESSIONS)  # and the server is still there
    assert (await raw.next()).code == Code.CONTENT


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
    raw.send(CON, Code.GET, 1, b"b0", uri_path=SESSIONS)
    first = await raw.next()
    assert tuple(first.opt.block2) == (0, True, 6)
    payload, num, szx = first.payload, 1, 6
    while True:
        if num == 3:  # a smaller size may be asked for at any point (RFC 7959 §2.4)
            num, szx = num * 2, 5
        raw.send(CON, Code.GET, 1 + num, b"b%d" % num, uri_path=SESSIONS, block2=block(num, szx))
        answer = await raw.next()
        assert answer.opt.etag == first.opt.etag == sim.device.etag
        assert tuple(answer.opt.block2)[0::2] == (num, szx)
        payload += answer.payload
        if not answer.opt.block2.more:
            break
        num += 1
    assert len(msgspec.json.decode(payload)["sessions"]) == 100
    assert renders == 1


async def test_a_later_block_of_nothing_kept_is_request_entity_incomplete(raw: Raw) -> None:
    raw.send(CON, Code.GET, 1, b"late", uri_path=("v1", "sessions", "history"), block2=block(3))
    assert (await raw.next()).code == Code.REQUEST_ENTITY_INCOMPLETE


async def test_observer_answering_rst_is_dropped(raw: Raw, sim: PagerSimulator) -> None:
    await register(raw, sim, b"obs")
    sim.console_create(3)
    note = await raw.next()
    assert (note.mtype, note.token, note.opt.observe) == (CON, b"obs", 1)
    raw.send(RST, Code.EMPTY, note.mid)
    await until_no_observers(sim, 1)
    sim.console_create(4)
    await raw.nothing()


async def test_observer_that_never_acks_is_dropped_after_retransmissions(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", 0.02)
    await register(raw, sim, b"deaf")
    sim.console_create(3)
    copies = [await raw.next() for _ in range(1 + TransportTuning.MAX_RETRANSMIT)]
    assert {(m.mtype, m.mid, m.opt.observe) for m in copies} == {(CON, copies[0].mid, 1)}
    await until_no_observers(sim)
    sim.console_create(4)
    await raw.nothing()


@pytest.mark.parametrize("observe", [1, None])
async def test_get_with_the_same_token_deregisters(
    raw: Raw, sim: PagerSimulator, observe: int | None
) -> None:
    await register(raw, sim, b"tok")
    raw.send(CON, Code.GET, 2, b"tok", uri_path=NOTIFY, observe=observe)
    answer = await raw.next()
    assert (answer.code, answer.opt.observe) == (Code.CONTENT, None)
    await until_no_observers(sim, 1)


async def test_silent_answers_nothing_and_forgets_observers(raw: Raw, sim: PagerSimulator) -> None:
    await register(raw, sim, b"o")
    await sim.set_silent(True)
    assert sim.observers == 0
    raw.send(CON, Code.GET, 2, b"g", uri_path=SESSIONS)
    sim.console_create(3)
    await raw.nothing()  # no answer, no notification ...
    assert raw.errors == []  # ... and no ICMP: the port is still bound
    await sim.set_silent(False)
    raw.send(CON, Code.GET, 3, b"g", uri_path=SESSIONS)
    assert (await raw.next()).code == Code.CONTENT
    sim.console_create(4)
    await raw.nothing()  # the observation did not come back


async def test_silence_forgets_a_pending_separate_response(raw: Raw, sim: PagerSimulator) -> None:
    sim.latency = 0.3
    raw.send(CON, Code.POST, 1, b"p", b'{"number":5}', uri_path=SESSIONS, content_format=50)
    assert (await raw.next()).code == Code.EMPTY
    await sim.set_silent(True)
    await sim.set_silent(False)
    await raw.nothing(0.5)
    assert list(sim.received) == []  # it was never carried out


async def test_observer_whose_socket_closed_is_dropped_on_the_icmp_error(
    sim: PagerSimulator,
) -> None:
    transport, peer = await connect(sim)
    await register(peer, sim, b"gone")
    transport.close()  # the client goes away without a word: its port answers ICMP
    await asyncio.sleep(0.05)  # (the transport closes its socket on the next loop iteration)
    sim.console_create(3)
    await until_no_observers(sim, 1)  # not the ~45 s of unanswered retransmissions
    transport, peer = await connect(sim)  # and the simulator still reads its socket
    try:
        peer.send(CON, Code.GET, 2, b"next", uri_path=SESSIONS)
        assert (await peer.next()).code == Code.CONTENT
    finally:
        transport.close()


async def test_a_change_is_answered_before_it_is_notified(raw: Raw, sim: PagerSimulator) -> None:
    await register(raw, sim, b"obs")
    raw.send(CON, Code.POST, 2, b"mk", b'{"number":5}', uri_path=SESSIONS, content_format=50)
    answer, note = await raw.next(), await raw.next()
    assert (answer.mtype, answer.mid, answer.code) == (ACK, 2, Code.CREATED)
    assert (note.mtype, note.token, note.opt.observe) == (CON, b"obs", 1)
    assert note.payload == answer.payload  # the reply's envelope, encoded once
    assert sim.observers == 1


async def test_block_wise_notification_holds_the_next_until_fetched(
    raw: Raw, sim: PagerSimulator
) -> None:
    await register(raw, sim, b"big")
    sim.console_create(1, label="L" * 3000)  # a notification of about 3.3 KB
    sim.console_create(2)  # a small one, which must wait for the blocks of the first
    first = await raw.next()
    assert (first.mtype, first.token, first.opt.observe) == (CON, b"big", 1)
    assert tuple(first.opt.block2) == (0, True, 6)
    raw.send(ACK, Code.EMPTY, first.mid)
    await raw.nothing()  # held: nothing new while block 1.. are still to be fetched
    payload, num = first.payload, 1
    while True:  # RFC 7959 §3.4: the later blocks by plain GETs (new tokens, no Observe)
        raw.send(CON, Code.GET, 10 + num, b"f%d" % num, uri_path=NOTIFY, block2=block(num))
        answer = await raw.next()
        assert (answer.mtype, answer.code, answer.opt.observe) == (ACK, Code.CONTENT, None)
        assert answer.opt.etag == first.opt.etag
        payload += answer.payload
        if not answer.opt.block2.more:
            break
        num += 1
    assert [s["label"] for s in msgspec.json.decode(payload)["sessions"]] == ["L" * 3000]
    small = await raw.next()
    assert (small.mtype, small.token, small.opt.observe, small.opt.block2) == (
        CON,
        b"big",
        2,
        None,
    )
    assert [s["number"] for s in body(small)["sessions"]] == [2]


async def test_a_block_wise_notification_never_fetched_holds_the_next_only_so_long(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pager, "HOLD_LIMIT", 0.3)
    await register(raw, sim, b"lazy")
    sim.console_create(1, label="L" * 3000)
    sim.console_create(2)
    first = await raw.next()
    raw.send(ACK, Code.EMPTY, first.mid)
    await raw.nothing(0.2)
    small = await raw.next()
    assert (small.opt.observe, [s["number"] for s in body(small)["sessions"]]) == (2, [2])


async def test_an_observer_too_far_behind_is_told_so_with_5_03(
    raw: Raw, sim: PagerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pager, "BACKLOG", 3)
    await register(raw, sim, b"slow")
    sim.console_create(1, label="L" * 3000)  # block-wise: the next ones wait behind it
    first = await raw.next()
    raw.send(ACK, Code.EMPTY, first.mid)
    for number in range(2, 6):  # the fourth waiting notification is one too many
        sim.console_create(number)
    ended = await raw.next()
    assert (ended.token, ended.code, ended.opt.observe) == (b"slow", Code.SERVICE_UNAVAILABLE, None)
    assert sim.observers == 0


async def test_stop_closes_the_port_and_a_restart_serves_it_again(
    raw: Raw, sim: PagerSimulator
) -> None:
    await register(raw, sim, b"o")
    port = sim.port
    await sim.stop()
    assert sim.observers == 0
    await raw.nothing()  # observers are forgotten without a word
    raw.send(CON, Code.GET, 2, b"g", uri_path=SESSIONS)
    async with asyncio.timeout(1):
        while not raw.errors:  # noqa: ASYNC110 - the protocol callback fills the list
            await asyncio.sleep(0.01)
    assert isinstance(raw.errors[0], ConnectionRefusedError)  # ICMP port unreachable
    await sim.start()
    assert sim.port == port
    raw.send(CON, Code.GET, 3, b"g", uri_path=SESSIONS)
    assert (await raw.next()).code == Code.CONTENT


Scenario = Callable[[Raw, PagerSimulator], Awaitable[None]]


async def long_list_is_block_wise_and_rendered_once(raw: Raw, sim: PagerSimulator) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        await test_long_list_is_block_wise_and_rendered_once(raw, sim, monkeypatch)


@pytest.mark.parametrize(
    "scenario",
    [
        test_duplicate_con_is_answered_from_cache_and_processed_once,
        test_duplicate_con_while_delayed_gets_the_empty_ack_again,
        long_list_is_block_wise_and_rendered_once,
        test_observer_answering_rst_is_dropped,
        test_silent_answers_nothing_and_forgets_observers,
        test_stop_closes_the_port_and_a_restart_serves_it_again,
        test_block_wise_notification_holds_the_next_until_fetched,
    ],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario: Scenario) -> None:
    """The same behaviours with the simulator on uvloop (udp6 polls its socket with add_reader,
    which uvloop implements its own way)."""

    async def run() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with started_sim(ping_interval=0.2) as sim:
            transport, peer = await connect(sim)
            try:
                await scenario(peer, sim)
            finally:
                transport.close()

    uvloop.run(run())


def test_on_uvloop_an_observer_that_went_away_is_dropped_and_nobody_else_notices() -> None:
    """On uvloop the simulator runs aiocoap's simplesocketserver, which does not see ICMP
    errors: the observer is dropped when its notification's retransmissions run out."""

    async def run() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", 0.02)
            async with started_sim(ping_interval=0.2) as sim:
                transport, peer = await connect(sim)
                await register(peer, sim, b"gone")
                transport.close()
                await asyncio.sleep(0.05)
                sim.console_create(3)
                transport, peer = await connect(sim)
                try:
                    peer.send(CON, Code.GET, 2, b"next", uri_path=SESSIONS)
                    assert (await peer.next()).code == Code.CONTENT
                    await until_no_observers(sim)
                finally:
                    transport.close()

    uvloop.run(run())


class Counter(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    async def render_get(self, _request: Any) -> Any:
        return aiocoap.Message(payload=b"%d" % self.value)


def test_udp6_on_uvloop_stops_reading_after_an_icmp_error() -> None:
    """Why the simulator does not run udp6 on uvloop (`bridge.sim.pager.server.transport_for_loop`):
    aiocoap's udp6 server, asked to notify a client whose port has closed, gets an ICMP error
    (it sets IP_RECVERR); uvloop's add_reader (libuv's uv_poll) then stops polling the socket
    for good, and the server answers nobody any more. If this test fails, aiocoap or uvloop has
    fixed it and udp6 can serve on uvloop too."""

    async def run() -> None:
        counter = Counter()
        site = aiocoap.resource.Site()
        site.add_resource(["counter"], counter)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind(("::ffff:127.0.0.1", 0))
            port = holder.getsockname()[1]
            context = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", port), transports=["udp6"]
            )
        try:
            transport, peer = await connect(port)
            peer.send(CON, Code.GET, 1, b"o", uri_path=("counter",), observe=0)
            assert (await peer.next()).opt.observe == 0
            transport.close()
            await asyncio.sleep(0.05)
            counter.value += 1
            counter.updated_state()  # a notification to a closed port: ICMP port unreachable
            await asyncio.sleep(0.1)
            transport, peer = await connect(port)
            try:
                peer.send(CON, Code.GET, 2, b"g", uri_path=("counter",))
                await peer.nothing(1.0)  # deaf
            finally:
                transport.close()
        finally:
            await context.shutdown()

    uvloop.run(run())
