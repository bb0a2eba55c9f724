"""Scale-out: replicas in one MQTT 5 shared subscription group split the load, losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest

from bridge.app import Bridge
from bridge.config import Settings
from bridge.dev.mosquitto import Mosquitto
from tests.support import Peer, running

pytestmark = pytest.mark.broker

PAGERS = 200


def handled(bridge: Bridge) -> float:
    total = 0.0
    for metric in bridge.metrics.commands.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def test_two_replicas_share_the_load(
    broker: Mosquitto, bridge_settings: Callable[..., Settings], peer: Peer
) -> None:
    replicas = [
        Bridge(bridge_settings(mqtt_client_id=f"replica-{i}", mqtt_shared_group="bridges"))
        for i in range(2)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for replica in replicas:
            await stack.enter_async_context(running(replica))
        sent = {f"s{n}" for n in range(1, PAGERS + 1)}
        for n in range(1, PAGERS + 1):
            body = json.dumps({"action": "start", "transaction": f"s{n}"})
            await peer.publish(f"pager/{n}/action", body)

        await peer.wait_answered(sent)
        assert {r["status"] for each in peer.results.values() for r in each} == {"ok"}
        # Each command answered once: by one replica only.
        assert all(len(peer.results[t]) == 1 for t in sent)
        shares = [handled(r) for r in replicas]
        assert sum(shares) == PAGERS
        assert min(shares) > PAGERS * 0.2, shares  # both took a real share

    # Retained state is consistent whoever served the command: every session is there.
    async with Peer(broker.port) as late:
        await asyncio.sleep(0.5)
        sessions = {m[0] for m in late.messages if m[0].endswith("/session") and m[1]}
        assert len(sessions) == PAGERS
