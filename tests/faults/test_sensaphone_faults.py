"""Sensaphone.net misbehaves (500, 429 + Retry-After, stalls, session expiry) amid 100 commands."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.e2e.conftest import sensaphone_env
from tests.faults.tools import DurableClient, Ledger, summary

pytestmark = [pytest.mark.faults, pytest.mark.broker]

SCHEDULES = [600 + i for i in range(5)]
PER_SCHEDULE = 20
DEVICE = 1234


async def test_every_schedule_command_answered_and_no_create_twice(
    broker: Mosquitto,
    sensaphone: SensaphoneSimulator,
    bridge_at: Callable[..., AbstractAsyncContextManager[Bridge]],
) -> None:
    """Exactly one result per command, and Sensaphone holds exactly the ranges reported created.

    No broker fault, so "exactly one" result. Reads are retried through 500s, 429s and stalls;
    a create is retried only where the request provably was not processed (429, connection
    refused): a 500 may hide a processed create, so it is answered `upstream_unavailable` rather
    than risk a second range. Stalls here stay shorter than `sensaphone.timeout`: a create that
    times out may have been applied, and then Sensaphone would hold one range more than the
    results report (the documented limit of a non-idempotent API without request ids).
    """
    for schedule in SCHEDULES:
        sensaphone.store.add_schedule("default_schedule", (DEVICE, schedule), [])
    ledger = Ledger()
    client = DurableClient(broker.port, "faults-sensaphone", subscriptions=["schedule/#"])
    client.on_message = ledger.on_message
    env = sensaphone_env(sensaphone, sensaphone_timeout="3", sensaphone_deadline="10")
    kinds: dict[str, str] = {}
    async with client, bridge_at(**env):

        async def one_schedule(schedule: int) -> None:
            topic = f"schedule/{schedule}/timerange"
            for k in range(PER_SCHEDULE):
                action = "create" if k % 2 == 0 else "read"
                body = {"action": action, "device_id": DEVICE}
                if action == "create":
                    body |= {"start": f"{k:02d}:00", "end": f"{k:02d}:30", "interval": 62}
                transaction = f"s{schedule}-{k}"
                kinds[transaction] = action
                await client.publish(topic, ledger.command(topic, transaction, body))
                await asyncio.sleep(0.02)

        async def inject() -> None:
            await ledger.wait_count(10)
            sensaphone.fail_next(4, status=500)
            await ledger.wait_count(30)
            sensaphone.throttle_next(4, retry_after=0.3)
            await ledger.wait_count(50)
            sensaphone.stall_next(3, 1.0)
            await ledger.wait_count(70)
            sensaphone.expire_sessions()

        started = time.monotonic()
        await asyncio.gather(inject(), *(one_schedule(s) for s in SCHEDULES))
        await ledger.wait_all(60)
        elapsed = time.monotonic() - started

    lost, duplicates = ledger.lost(), ledger.duplicates()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for transaction, kind in kinds.items():
        first = ledger.results[transaction][0] if ledger.results[transaction] else None
        if first is not None:
            by_kind[kind]["ok" if first["status"] == "ok" else first["error"]["code"]] += 1
    stored = sum(len(sensaphone.store.ranges("default_schedule", (DEVICE, s))) for s in SCHEDULES)
    summary(
        "sensaphone_faults",
        sent=len(ledger.sent),
        lost=len(lost),
        duplicate_results=len(duplicates),
        creates=dict(by_kind["create"]),
        reads=dict(by_kind["read"]),
        ranges_created=sensaphone.ranges_created,
        logins=sensaphone.logins,
        total_s=elapsed,
    )
    assert not lost
    assert not duplicates
    assert by_kind["read"] == {"ok": len(SCHEDULES) * PER_SCHEDULE // 2}
    assert set(by_kind["create"]) <= {"ok", "upstream_unavailable"}
    assert sensaphone.ranges_created == by_kind["create"]["ok"] == stored
    assert sensaphone.logins == 2  # the first, and one after the sessions expired
