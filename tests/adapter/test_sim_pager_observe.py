"""Observe on the simulator's /v1/notify: changes by anyone, pings, and Observe switched off."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from bridge.coap.client import Transmitter
from bridge.sim.pager.server import PagerSimulator
from tests.adapter.conftest import call, only


async def notes(
    tx: Transmitter, query: dict[str, str | int] | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    async for reply in tx.observe("/v1/notify", query=query):
        assert reply.ok
        yield msgspec.json.decode(reply.payload)


async def next_change(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The next non-ping notification."""
    async with asyncio.timeout(3):
        async for note in stream:
            if note["responseTypes"] != ["ping"]:
                return note
    raise AssertionError("observation ended")


async def test_observe_delivers_console_changes_in_order(
    tx: Transmitter, sim: PagerSimulator
) -> None:
    sim.console_create(50)
    stream = notes(tx, {"action": "get_sessions"})
    first = await anext(stream)
    assert [s["number"] for s in first["sessions"]] == [50]
    sim.console_page(50)
    sim.console_create(51, label="Ann")
    sim.console_clear(50)
    sim.console_remove(51)
    seen = [only(await next_change(stream)) for _ in range(4)]
    assert [(s["number"], s["state"], s.get("clearType")) for s in seen] == [
        (50, "paged", None),
        (51, "started", None),
        (50, "cleared", "STOP"),
        (51, "cleared", "REMOVED"),
    ]
    sequences = [s["sessionSequence"] for s in seen]
    assert sequences == sorted(sequences)
    await stream.aclose()


async def test_observe_delivers_changes_by_other_clients_and_settings(
    tx: Transmitter, sim: PagerSimulator
) -> None:
    stream = notes(tx)
    first = await anext(stream)
    assert first["responseTypes"] == ["ping"]
    other = Transmitter(sim.uri, timeout=2.0)
    try:
        await call(other, "POST", body={"number": 60, "action": "page"})
        note = await next_change(stream)
        assert note["responseTypes"] == ["sessions", "statistics"]
        assert only(note)["state"] == "paged"
        assert note["statistics"]["guestsServed"] == 1
        await call(other, "POST", "/v1/settings", body={"systemId": 3})
        note = await next_change(stream)
        assert (note["responseTypes"], note["settings"]["systemId"]) == (["settings"], 3)
    finally:
        await other.close()
        await stream.aclose()


async def test_observe_pings(tx: Transmitter, sim: PagerSimulator) -> None:
    stream = notes(tx)
    await anext(stream)
    async with asyncio.timeout(2):
        ping = await anext(stream)
    assert ping["responseTypes"] == ["ping"]
    assert ping["deviceName"] == "T7470 Simulator"
    dt.datetime.fromisoformat(ping["timestamp"])
    assert sim.observers == 1
    await stream.aclose()


async def test_observe_unavailable_answers_not_found() -> None:
    sim = PagerSimulator(port=0, observe=False)
    await sim.start()
    tx = Transmitter(sim.uri, timeout=2.0)
    try:
        replies = [r async for r in tx.observe("/v1/notify", query={"action": "get_sessions"})]
        assert len(replies) == 1
        assert replies[0].code == "4.04"
        assert b"Observe is not available" in replies[0].payload
        assert sim.observers == 0
    finally:
        await tx.close()
        await sim.stop()


async def test_notify_refuses_unknown_action(tx: Transmitter) -> None:
    replies = [r async for r in tx.observe("/v1/notify", query={"action": "dance"})]
    assert [r.code for r in replies] == ["4.00"]


async def test_plain_get_of_notify_is_one_answer(tx: Transmitter, sim: PagerSimulator) -> None:
    sim.console_create(5)
    reply = await tx.request("GET", "/v1/notify", query={"action": "get_sessions"})
    assert reply.code == "2.05"
    assert [s["number"] for s in msgspec.json.decode(reply.payload)["sessions"]] == [5]
    assert sim.observers == 0
