"""Adapter-tier fixtures: a T7470 simulator on a free loopback UDP port and a client for it.

Also `call` and `only`, the helpers the simulator tests speak through, and `sensaphone_clients`,
the Sensaphone client factory of the Sensaphone adapter tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from bridge.coap.client import Transmitter
from bridge.config import SensaphoneSettings
from bridge.schedules.sensaphone import SensaphoneClient
from bridge.sim.pager.server import PagerSimulator
from tests.support import started_sim

SESSIONS = "/v1/sessions"


@pytest.fixture
async def sim() -> AsyncIterator[PagerSimulator]:
    """A running simulator with fast pings (0.2 s), stopped after the test."""
    async with started_sim(ping_interval=0.2) as simulator:
        yield simulator


@pytest.fixture
async def tx(sim: PagerSimulator) -> AsyncIterator[Transmitter]:
    """A started transmitter client for `sim` with a short timeout."""
    client = Transmitter(sim.uri, timeout=2.0)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def call(
    tx: Transmitter,
    method: str,
    path: str = SESSIONS,
    *,
    number: int | None = None,
    body: dict[str, Any] | bytes | None = None,
) -> tuple[str, Any]:
    """One request; returns the code and the decoded JSON body (None when empty)."""
    payload = msgspec.json.encode(body) if isinstance(body, dict) else body
    query = {"number": number} if number is not None else None
    reply = await tx.request(method, path, query=query, body=payload)
    return reply.code, msgspec.json.decode(reply.payload) if reply.payload else None


def only(body: Any) -> dict[str, Any]:
    sessions = body["sessions"]
    assert len(sessions) == 1
    return dict(sessions[0])


SENSAPHONE_PASSWORD = "demo-password"  # the simulator's demo account
MakeClient = Callable[..., SensaphoneClient]


@contextlib.asynccontextmanager
async def sensaphone_clients(url: str, **options: Any) -> AsyncIterator[MakeClient]:
    """A factory of Sensaphone clients on `url` (the demo account, short timeouts; any setting
    overridden by keyword), each built with `options` and then `more` (metrics, auth_backoff,
    ...); all are closed afterwards."""
    clients: list[SensaphoneClient] = []

    def make(more: dict[str, Any] | None = None, /, **overrides: Any) -> SensaphoneClient:
        fields: dict[str, Any] = {
            "url": url,
            "user": "demo",
            "password": SENSAPHONE_PASSWORD,
            "timeout": 2.0,
            "deadline": 5.0,
            **overrides,
        }
        client = SensaphoneClient(SensaphoneSettings(**fields), **(options | (more or {})))
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
