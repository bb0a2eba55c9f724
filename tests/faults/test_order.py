"""Per-pager order, checked at the device, after a burst randomly interleaved across pagers."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.faults.tools import DurableClient, Ledger, summary

pytestmark = [pytest.mark.faults, pytest.mark.broker]

PAGERS = 40
# A session's life twice over; each step is only valid after the one before it.
STEPS: list[tuple[dict[str, object], tuple[str, str | None]]] = [
    ({"action": "start"}, ("POST", None)),
    ({"action": "update", "label": "Ada"}, ("PUT", None)),
    ({"action": "page"}, ("PUT", "page")),
    ({"action": "update", "partySize": 3}, ("PUT", None)),
    ({"action": "clear"}, ("PUT", "clear")),
    ({"action": "start", "label": "Bo"}, ("POST", None)),
    ({"action": "page", "pageMode": "Vibe1"}, ("PUT", "page")),
    ({"action": "remove"}, ("PUT", "remove")),
    ({"action": "start"}, ("POST", None)),
    ({"action": "delete"}, ("DELETE", None)),
]


async def test_order_per_pager_under_random_interleaving(
    broker: Mosquitto,
    pager_sim: PagerSimulator,
    bridge_at: Callable[..., AbstractAsyncContextManager[Bridge]],
) -> None:
    """Exactly one result per command, all ok, and each pager's requests reach the device in
    the order they were published (any reordering would make a step invalid and fail it)."""
    rng = random.Random(7470)
    queues = {400 + n: collections.deque(range(len(STEPS))) for n in range(PAGERS)}
    order: list[tuple[int, int]] = []
    while queues:
        number = rng.choice(list(queues))
        order.append((number, queues[number].popleft()))
        if not queues[number]:
            del queues[number]
    ledger = Ledger()
    client = DurableClient(broker.port, "faults-order", subscriptions=["pager/+/action/result"])
    client.on_message = ledger.on_message
    async with client, bridge_at():
        started = time.monotonic()
        # Published back to back without waiting for each PUBACK: the client keeps them in order.
        await asyncio.gather(
            *(
                client.publish(
                    f"pager/{n}/action",
                    ledger.command(f"pager/{n}/action", f"r{n}-{k}", STEPS[k][0]),
                )
                for n, k in order
            )
        )
        await ledger.wait_all(30)
        elapsed = time.monotonic() - started

    seen: dict[int, list[tuple[str, str | None]]] = collections.defaultdict(list)
    for number, method, action in pager_sim.received:
        seen[number].append((method, action))
    expected = [wire for _, wire in STEPS]
    out_of_order = [n for n in range(400, 400 + PAGERS) if seen[n] != expected]
    summary(
        "order",
        sent=len(ledger.sent),
        lost=len(ledger.lost()),
        duplicate_results=len(ledger.duplicates()),
        outcomes=dict(ledger.statuses()),
        pagers_out_of_order=len(out_of_order),
        total_s=elapsed,
    )
    assert not ledger.lost()
    assert not ledger.duplicates()
    assert not out_of_order, {n: seen[n] for n in out_of_order[:3]}
    assert ledger.statuses() == {"ok": len(order)}
