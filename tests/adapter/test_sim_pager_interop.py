"""The simulator against aiocoap's client, an independent CoAP implementation.

The benchmark floor and the reference bridge use aiocoap against the simulator, so block-wise
transfers (RFC 7959), Observe (RFC 7641) and separate responses must work with it as it is.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import msgspec
import pytest

from bridge.sim.pager import PagerSimulator
from tests.support import started_sim


@pytest.fixture
async def big_sim() -> AsyncIterator[PagerSimulator]:
    """A simulator that takes numbers up to 2,000."""
    async with started_sim(max_number=2000, ping_interval=30) as simulator:
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
    """Register on /v1/notify; returns the first response and the list notifications go to.

    register_callback sees every notification (aiocoap's iterator keeps only the latest).
    """
    message = aiocoap.Message(code=aiocoap.GET, uri=f"{sim.uri}/v1/notify{query}", observe=0)
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


async def test_list_of_2000_sessions_arrives_block_wise_rendered_once(
    big_sim: PagerSimulator, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(1, 2001):
        big_sim.console_create(number, label=f"guest {number}", party_size=2)
    renders = 0
    sessions = big_sim.device.sessions

    def counting(number: int | None = None) -> list[object]:
        nonlocal renders
        renders += 1
        return list(sessions(number))

    monkeypatch.setattr(big_sim.device, "sessions", counting)
    message = aiocoap.Message(code=aiocoap.GET, uri=f"{big_sim.uri}/v1/sessions")
    async with asyncio.timeout(30):
        response = await client.request(message).response
    assert str(response.code).startswith("2.05")
    assert len(response.payload) > 200_000
    listing = decoded(response)
    assert [s["number"] for s in listing["sessions"]] == list(range(1, 2001))
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


async def test_large_notification_goes_block_wise_and_keeps_its_place(
    sim: PagerSimulator, client: Any
) -> None:
    for number in range(1, 51):
        sim.console_create(number, label="a long enough label to need blocks")
    _, notes = await observe(client, sim)
    # DELETE /v1/sessions ends all 50: a block-wise answer (aiocoap fetches its later blocks by
    # repeating the DELETE with Block2: served from the kept body, not executed again) and a
    # block-wise notification, then a small one that must not overtake it.
    message = aiocoap.Message(code=aiocoap.DELETE, uri=f"{sim.uri}/v1/sessions")
    response = await client.request(message).response
    assert str(response.code).startswith("2.02")
    assert len(decoded(response)["sessions"]) == 50
    sim.console_create(1)
    await until(lambda: len(changes(notes)) >= 2)
    big, small = changes(notes)
    assert [s["state"] for s in big["sessions"]] == ["cleared"] * 50
    assert [(s["number"], s["state"]) for s in small["sessions"]] == [(1, "started")]
    assert len(sim.device.history) == 50  # cleared once, not once per block


async def test_registration_with_a_long_list_then_changes(
    big_sim: PagerSimulator, client: Any
) -> None:
    for number in range(1, 1001):
        big_sim.console_create(number)
    first, notes = await observe(client, big_sim, "?action=get_sessions")
    assert first.opt.observe == 0
    assert len(decoded(first)["sessions"]) == 1000
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
