"""A broker with TLS, a password file and an ACL: right credentials work, wrong ones back off."""

from __future__ import annotations

import asyncio
import logging
import time

import aiomqtt
import pytest

from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from tests.faults.conftest import BRIDGE_PASSWORD, CLIENT_PASSWORD
from tests.faults.tools import DurableClient, Ledger, SecureSetup, fetch_metrics, sample, summary
from tests.support import running, settings

pytestmark = [pytest.mark.faults, pytest.mark.broker]

WATCH = 4.0  # seconds of refused connections to count retries over


def bridge_env(broker: Mosquitto, secure: SecureSetup, sim: PagerSimulator) -> dict[str, str]:
    return {
        "mqtt_url": f"mqtts://127.0.0.1:{broker.port}",
        "mqtt_username": "bridge",
        "mqtt_ca_file": str(secure.ca_file),
        "mqtt_client_id": "iotbridge-secure",
        "pager_url": sim.uri,
    }


async def test_tls_password_and_acl(
    secure_broker: Mosquitto,
    secure: SecureSetup,
    pager_sim: PagerSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One command, exactly one result, over mqtts:// with a password and an ACL; a wrong
    password is logged, counted as `not_authorized` and retried with backoff; anonymous fails."""
    env = bridge_env(secure_broker, secure, pager_sim)
    ledger = Ledger()
    client = DurableClient(
        secure_broker.port,
        "faults-secure-client",
        subscriptions=["pager/+/action/result"],
        on_message=ledger.on_message,
        username="client",
        password=CLIENT_PASSWORD,
        tls_context=secure.context(),
    )
    async with client, running(Bridge(settings(**env, mqtt_password=BRIDGE_PASSWORD))):
        body = {"action": "start", "label": "tls"}
        await client.publish("pager/22/action", ledger.command("pager/22/action", "s1", body))
        await client.publish("pager/22/action", ledger.command("pager/22/action", "s2", {}))
        await ledger.wait_all(10)
    assert [r["status"] for r in ledger.results["s1"]] == ["ok"]
    assert [r["error"]["code"] for r in ledger.results["s2"]] == ["invalid_payload"]

    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    wrong = Bridge(
        settings(
            **env,
            mqtt_password="not-the-password",
            mqtt_reconnect_min="0.2",
            mqtt_reconnect_max="2",
        )
    )
    task = asyncio.create_task(wrong.run(install_signals=False))
    await asyncio.sleep(0.5)
    first = await asyncio.to_thread(fetch_metrics, wrong.probes.port)
    await asyncio.sleep(WATCH)
    last = await asyncio.to_thread(fetch_metrics, wrong.probes.port)
    wrong.stop()
    async with asyncio.timeout(10):
        await task
    refused = sample(last, "iotbridge_mqtt_connect_failures_total", reason="not_authorized")
    retries = sample(last, "iotbridge_mqtt_reconnects_total") - sample(
        first, "iotbridge_mqtt_reconnects_total"
    )
    summary("mqtt_wrong_password", refused=refused, retries_per_s=retries / WATCH)
    assert refused >= 2
    assert sample(last, "iotbridge_mqtt_connected") == 0
    # Backoff 0.2 s doubling to 2 s (jittered): a handful of attempts, not a hot loop.
    assert 1 <= retries <= 15, retries
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.mqtt"]
    said = [m for m in lines if "refused our credentials" in m]
    assert said, lines
    assert "'bridge'" in said[0], said[0]
    assert "Not authorized" in said[0], said[0]

    started = time.monotonic()
    for username, password in ((None, None), ("bridge", "nope")):
        stranger = aiomqtt.Client(
            "127.0.0.1",
            secure_broker.port,
            username=username,
            password=password,
            tls_context=secure.context(),
            timeout=5,
        )
        with pytest.raises(aiomqtt.MqttError):
            async with stranger:
                pass
    assert time.monotonic() - started < 10


async def test_the_readme_acl_is_all_the_bridge_needs(
    secure_broker: Mosquitto, secure: SecureSetup, pager_sim: PagerSimulator
) -> None:
    """Under README's ACL (tests.faults.tools.BRIDGE_ACL) with Home Assistant discovery and a
    shared group: a command, its session and events, the observer claim, the discovery configs
    and the idle sessions are all published, and the broker refused none of it."""
    env = bridge_env(secure_broker, secure, pager_sim) | {
        "mqtt_password": BRIDGE_PASSWORD,
        "mqtt_shared_group": "iotbridge",
        "discovery_enabled": "true",
        "discovery_node": "restaurant",
        "pager_numbers": "24,25",
    }
    seen: dict[str, bytes] = {}
    wanted = ("pager/24/action/result", "pager/24/session", "bridge/observer")
    everything = asyncio.Event()

    def note(topic: str, payload: bytes, _props: object) -> None:
        seen[topic] = payload
        if seen.get("pager/25/session") == b"" and all(t in seen for t in wanted):
            everything.set()

    client = DurableClient(
        secure_broker.port,
        "faults-acl-client",
        subscriptions=["pager/#", "bridge/#"],
        on_message=note,
        username="client",
        password=CLIENT_PASSWORD,
        tls_context=secure.context(),
    )
    async with client, running(Bridge(settings(**env))) as bridge:
        await client.publish("pager/24/action", '{"action":"start","transaction":"acl"}')
        # The idle session goes out after discovery; the first claim once no other replica
        # claimed for a while (bridge/pager/observer.py): both some seconds after the start.
        async with asyncio.timeout(15):
            await everything.wait()
        refused = bridge.metrics.registry.get_sample_value(
            "iotbridge_mqtt_publish_refused_total", {"reason": "not_authorized"}
        )
        failures = sample(
            await asyncio.to_thread(fetch_metrics, bridge.probes.port),
            "iotbridge_mqtt_publish_refused_total",
        )
    assert b'"status":"ok"' in seen["pager/24/action/result"]
    assert refused is None or refused == 0
    assert failures == 0
