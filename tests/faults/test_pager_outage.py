"""The transmitter goes silent for 10 s (datagrams swallowed, no ICMP), then answers again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.faults.tools import DurableClient, Ledger, fetch_metrics, sample, summary

pytestmark = [pytest.mark.faults, pytest.mark.broker]

SILENT_FOR = 10.0
RATE = 10  # commands per second, spread over pagers


class Load:
    """Alerts at RATE per second over 30 pagers, each with its own transaction."""

    def __init__(self, client: DurableClient, ledger: Ledger) -> None:
        self.client, self.ledger, self.sent = client, ledger, 0

    async def burst(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            topic = f"pager/{300 + self.sent % 30}/action"
            body = {"action": "alert", "message": "table ready"}
            await self.client.publish(topic, self.ledger.command(topic, f"o{self.sent}", body))
            self.sent += 1
            await asyncio.sleep(1 / RATE)

    async def until_closed(self, port: int) -> float | None:
        """Keep the load on until /metrics shows the circuit closed, and one second more."""
        closed_at = None
        for _ in range(100):
            await self.burst(0.1)
            if closed_at is None:
                now = await asyncio.to_thread(fetch_metrics, port)
                if sample(now, "iotbridge_circuit_state", upstream="pager") == 0.0:
                    closed_at = time.monotonic()
            elif time.monotonic() - closed_at > 1:
                break
        return closed_at


def opened_total(metrics: str) -> int:
    return int(sample(metrics, "iotbridge_circuit_transitions_total", state="open"))


async def test_silent_transmitter_opens_and_closes_the_circuit(
    broker: Mosquitto,
    pager_sim: PagerSimulator,
    bridge_at: Callable[..., AbstractAsyncContextManager[Bridge]],
) -> None:
    """Exactly one result per command: ok, or `upstream_timeout` / `upstream_unavailable`.

    No broker fault here, so nothing is redelivered and "exactly one" is the right bar. While
    the transmitter is silent the first commands time out (`pager_timeout`), then the circuit
    opens and the rest fail at once with `upstream_unavailable`; every `cooldown` one probe
    goes through; once the transmitter answers a probe closes the circuit. Commands already
    waiting for the transmitter when the circuit opens are refused too, not timed out one by one.
    """
    ledger = Ledger()
    client = DurableClient(broker.port, "faults-outage", subscriptions=["pager/+/action/result"])
    client.on_message = ledger.on_message
    env = {"pager_timeout": "1", "pager_breaker_cooldown": "2", "pager_breaker_failures": "3"}
    async with client, bridge_at(**env) as bridge:
        port = bridge.probes.port
        load = Load(client, ledger)
        await load.burst(1.0)
        await pager_sim.set_silent(True)
        await load.burst(SILENT_FOR / 2)
        during = await asyncio.to_thread(fetch_metrics, port)
        await load.burst(SILENT_FOR / 2)
        await pager_sim.set_silent(False)
        back = time.monotonic()
        closed_at = await load.until_closed(port)
        await ledger.wait_all(15)
        after = await asyncio.to_thread(fetch_metrics, port)

    lost, duplicates = ledger.lost(), ledger.duplicates()
    statuses = ledger.statuses()
    ok_after = [ledger.first_at[t] for t in ledger.sent if ledger.first_at.get(t, 0) > back]
    first_ok = min(
        (
            ledger.first_at[t]
            for t in ledger.sent
            if ledger.results[t][0]["status"] == "ok" and ledger.first_at[t] > back
        ),
        default=-1.0,
    )
    summary(
        "pager_silent",
        sent=len(ledger.sent),
        lost=len(lost),
        duplicate_results=len(duplicates),
        outcomes=dict(statuses),
        back_to_first_ok_s=first_ok - back if first_ok > 0 else -1.0,
        back_to_closed_s=(closed_at or back) - back,
        opened=opened_total(after),
    )
    assert ok_after
    assert not lost
    assert not duplicates
    assert set(statuses) <= {"ok", "upstream_timeout", "upstream_unavailable"}, statuses
    # Only the requests that opened the circuit and the failed probes wait out a timeout; the
    # ones queued behind them are refused when their turn comes (bridge.core.breaker.recheck).
    assert 3 <= statuses["upstream_timeout"] <= 3 + opened_total(after)
    assert statuses["upstream_unavailable"] >= 10
    assert sample(during, "iotbridge_circuit_state", upstream="pager") in (1.0, 2.0)
    assert sample(after, "iotbridge_circuit_state", upstream="pager") == 0.0
    opened = sample(after, "iotbridge_circuit_transitions_total", upstream="pager", state="open")
    closed = sample(after, "iotbridge_circuit_transitions_total", upstream="pager", state="closed")
    assert opened >= 1
    assert closed >= 1
    assert closed_at is not None
    assert closed_at - back < 5
