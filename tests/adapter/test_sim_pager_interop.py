"""The simulator against aiocoap's client.

The benchmark floor and the reference bridge use aiocoap against the simulator, so block-wise
transfers (RFC 7959), Observe (RFC 7641) and separate responses must work with it as it is. The
simulator is served by aiocoap too; these tests also pin where it departs from aiocoap's plain
server path: every notification delivered (`ObservableResource.updated_state()` is lossy), and
notifications too large for one datagram sent block-wise.
"""

from __future__ import annotations

import asyncio
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import aiocoap.resource
import msgspec
import pytest
from aiocoap.numbers.codes import Code

from bridge.sim.pager.server import PagerSimulator
from tests.support import started_sim


@pytest.fixture
async def big_sim() -> AsyncIterator[PagerSimulator]:
    """A simulator that takes numbers up to 10,000."""
    async with started_sim(max_number=10_000, ping_interval=30) as simulator:
        yield simulator


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield context
    finally:
        await context.shutdown()


def decoded(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.json.decode(response.payload)
    return body


class Observation(list[Any]):
    """The notifications of one observation; holds the request (aiocoap ends an observation
    whose request object is garbage-collected)."""

    request: Any = None


async def observe(client: Any, sim: PagerSimulator, query: str = "") -> tuple[Any, Observation]:
    return await observe_uri(client, f"{sim.uri}/v1/notify{query}")


async def observe_uri(client: Any, uri: str) -> tuple[Any, Observation]:
    """Register on `uri`; returns the first response and the list notifications go to.

    register_callback sees every notification (aiocoap's iterator keeps only the latest).
    """
    message = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
    request = client.request(message)
    notes = Observation()
    notes.request = request
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        request.observation.register_callback(notes.append)
    async with asyncio.timeout(10):
        first = await request.response
    return first, notes


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - a callback fills what is polled here
            await asyncio.sleep(0.02)


def changes(notes: list[Any]) -> list[dict[str, Any]]:
    return [body for body in map(decoded, notes) if body["responseTypes"] != ["ping"]]


async def test_ten_thousand_sessions_arrive_block_wise_rendered_once(
    big_sim: PagerSimulator, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(1, 10_001):
        big_sim.console_create(number, label=f"guest {number}", party_size=2)
    renders = 0
    sessions = big_sim.device.sessions

    def counting(number: int | None = None) -> list[object]:
        nonlocal renders
        renders += 1
        return list(sessions(number))

    monkeypatch.setattr(big_sim.device, "sessions", counting)
    message = aiocoap.Message(code=aiocoap.GET, uri=f"{big_sim.uri}/v1/sessions")
    started = time.monotonic()
    async with asyncio.timeout(30):
        response = await client.request(message).response
    # About a second on 2 idle cores (client and server in this one process); the margin is
    # for a loaded machine, the point is that it is not the ~45 s of a lost block.
    assert time.monotonic() - started < 6
    assert response.code == Code.CONTENT
    assert len(response.payload) > 2_000_000  # 2,200 blocks and more
    listing = decoded(response)
    assert [s["number"] for s in listing["sessions"]] == list(range(1, 10_001))
    assert response.opt.etag == big_sim.device.etag
    assert renders == 1


async def test_burst_of_500_changes_reaches_an_observer_every_one_in_order(
    sim: PagerSimulator, client: Any
) -> None:
    first, notes = await observe(client, sim)
    assert first.opt.observe == 0
    for number in range(1, 501):
        sim.console_create(number)
    await until(lambda: len(changes(notes)) >= 500)
    seen = changes(notes)
    assert [note["sessions"][0]["number"] for note in seen] == list(range(1, 501))
    sequences = [note["globalSessionSequence"] for note in seen]
    assert sequences == sorted(sequences)
    observe_numbers = [note.opt.observe for note in notes]
    assert observe_numbers == sorted(observe_numbers)


class Counter(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """aiocoap's plain observable resource: `updated_state()` on every change."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def change(self) -> None:
        self.value += 1
        self.updated_state()

    async def render_get(self, _request: Any) -> Any:
        return aiocoap.Message(payload=b"%d" % self.value)


@pytest.fixture
async def counter() -> AsyncIterator[tuple[Counter, str]]:
    """A `Counter` on an aiocoap server context of its own; yields it and its URI."""
    resource = Counter()
    site = aiocoap.resource.Site()
    site.add_resource(["counter"], resource)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as holder:  # a free port, held
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("::ffff:127.0.0.1", 0))
        port = holder.getsockname()[1]
        context = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
    try:
        yield resource, f"coap://127.0.0.1:{port}/counter"
    finally:
        await context.shutdown()


async def test_updated_state_is_lossy_the_simulator_is_not(
    counter: tuple[Counter, str], sim: PagerSimulator, client: Any
) -> None:
    """200 rapid changes: aiocoap's ObservableResource sends the latest state, once (RFC 7641
    allows it); the simulator, which answers through the observation's pipe, sends all 200."""
    resource, uri = counter
    _, plain = await observe_uri(client, uri)
    _, notes = await observe(client, sim)
    for number in range(1, 201):
        resource.change()
        sim.console_create(number)
    await until(lambda: len(changes(notes)) >= 200)
    await asyncio.sleep(0.2)  # time for any late notification of the plain resource
    assert [note.payload for note in plain] == [b"200"]  # 199 changes never reached the client
    seen = changes(notes)
    assert [note["sessions"][0]["number"] for note in seen] == list(range(1, 201))


async def test_clear_all_of_many_notifies_block_wise_and_keeps_its_place(
    big_sim: PagerSimulator, client: Any
) -> None:
    for number in range(1, 2001):
        big_sim.console_create(number, label=f"guest {number}")
    _, notes = await observe(client, big_sim)
    # DELETE /v1/sessions ends all 2,000: a block-wise answer (aiocoap fetches its later blocks
    # by repeating the DELETE with Block2: served from the kept body, not executed again) and
    # a block-wise notification of the full list, then a small one that must not overtake it.
    message = aiocoap.Message(code=aiocoap.DELETE, uri=f"{big_sim.uri}/v1/sessions")
    response = await client.request(message).response
    assert response.code == Code.DELETED
    assert len(decoded(response)["sessions"]) == 2000
    big_sim.console_create(1)
    await until(lambda: len(changes(notes)) >= 2)
    big, small = changes(notes)
    assert len(notes[-2].payload) > 400_000
    assert [s["state"] for s in big["sessions"]] == ["cleared"] * 2000
    assert [(s["number"], s["state"]) for s in small["sessions"]] == [(1, "started")]
    assert len(big_sim.device.history) == 1000  # cleared once (the history keeps 1,000)
    assert big_sim.device.statistics().numSessions == 2001


async def test_registration_with_ten_thousand_sessions_then_changes(
    big_sim: PagerSimulator, client: Any
) -> None:
    for number in range(1, 10_001):
        big_sim.console_create(number, label=f"guest {number}")
    first, notes = await observe(client, big_sim, "?action=get_sessions")
    assert first.opt.observe == 0
    assert len(first.payload) > 2_000_000
    assert len(decoded(first)["sessions"]) == 10_000
    big_sim.console_page(7)
    await until(lambda: len(changes(notes)) >= 1)
    assert [(s["number"], s["state"]) for s in changes(notes)[0]["sessions"]] == [(7, "paged")]
    assert big_sim.observers == 1


async def test_separate_response_after_latency(sim: PagerSimulator, client: Any) -> None:
    sim.latency = 0.3
    message = aiocoap.Message(
        code=aiocoap.POST,
        uri=f"{sim.uri}/v1/sessions",
        payload=b'{"number":12}',
        content_format=50,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.request(message).response
    assert loop.time() - started >= 0.3
    assert str(response.code).startswith("2.01")
    assert list(sim.received) == [(12, "POST", None)]
