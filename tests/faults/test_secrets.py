"""No secret in logs, results, dead letters or /metrics at DEBUG, through all sorts of failure."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.faults.conftest import BRIDGE_PASSWORD, CLIENT_PASSWORD
from tests.faults.tools import BridgeProcess, DurableClient, Ledger, SecureSetup, summary

pytestmark = [pytest.mark.faults, pytest.mark.broker]

SENSAPHONE_PASSWORD = "sens-secret-right-91f3"
WRONG_SENSAPHONE_PASSWORD = "sens-secret-wrong-0c77"
WRONG_MQTT_PASSWORD = "mqtt-secret-wrong-44d1"
SCHEDULE = "schedule/28487/timerange"
SCHEDULES = "{'28487': {kind: default_schedule, device_id: 1234}}"


@pytest.fixture
def sensaphone() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator(accounts={"ops": (SENSAPHONE_PASSWORD, 4242)}) as sim:
        yield sim


class Session:
    """A client that records everything it sees, and bridge processes to talk to."""

    def __init__(
        self,
        broker: Mosquitto,
        secure: SecureSetup,
        pager_sim: PagerSimulator,
        sensaphone: SensaphoneSimulator,
        stderr: Path,
    ) -> None:
        self.broker, self.secure, self.stderr = broker, secure, stderr
        self.pager_sim, self.sensaphone = pager_sim, sensaphone
        self.seen: list[bytes] = []
        self.codes: list[str] = []
        self.ledger = Ledger()
        self.client = DurableClient(
            broker.port,
            "faults-secrets",
            subscriptions=["pager/#", "schedule/#", "bridge/#"],
            on_message=self._on_message,
            username="client",
            password=CLIENT_PASSWORD,
            tls_context=secure.context(),
        )

    def _on_message(self, topic: str, payload: bytes, props: Any) -> None:
        self.seen.append(topic.encode() + b" " + payload)
        self.ledger.on_message(topic, payload, props)

    def bridge(self, mqtt_password: str, sensaphone_password: str, **env: str) -> BridgeProcess:
        """At DEBUG, with the MQTT password in the URL."""
        port = self.broker.port
        base = {
            "IOTBRIDGE_MQTT_URL": f"mqtts://bridge:{mqtt_password}@127.0.0.1:{port}",
            "IOTBRIDGE_MQTT_CA_FILE": str(self.secure.ca_file),
            "IOTBRIDGE_MQTT_CLIENT_ID": "iotbridge-secrets",
            "IOTBRIDGE_PAGER_URL": self.pager_sim.uri,
            "IOTBRIDGE_PAGER_TIMEOUT": "1",
            "IOTBRIDGE_SENSAPHONE_URL": self.sensaphone.url,
            "IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE": "true",  # the simulator, over plain HTTP
            "IOTBRIDGE_SENSAPHONE_USER": "ops",
            "IOTBRIDGE_SENSAPHONE_PASSWORD": sensaphone_password,
            "IOTBRIDGE_SENSAPHONE_SCHEDULES": SCHEDULES,
            "IOTBRIDGE_LOG_LEVEL": "debug",
        }
        return BridgeProcess(base | env, self.stderr)

    async def command(self, topic: str, transaction: str, body: dict[str, object]) -> None:
        """Send one command and note its outcome (`ok` or the error code) in `codes`."""
        await self.client.publish(topic, self.ledger.command(topic, transaction, body))
        await self.ledger.wait_all(20)
        result = self.ledger.results[transaction][0]
        self.codes.append("ok" if result["status"] == "ok" else result["error"]["code"])

    async def serve(
        self,
        mqtt_password: str,
        sensaphone_password: str,
        work: Callable[[Session], Awaitable[None]],
        **env: str,
    ) -> str:
        """Run a bridge process through `work`, stop it with SIGTERM; returns its /metrics."""
        process = self.bridge(mqtt_password, sensaphone_password, **env)
        process.start()
        try:
            await _until_ready(process)
            await work(self)
            metrics = await asyncio.to_thread(process.metrics)
            assert await asyncio.to_thread(process.signal, signal.SIGTERM) == 0
            return metrics
        finally:
            process.stop()


async def wrong_sensaphone(session: Session) -> None:
    for i in range(3):
        await session.command(SCHEDULE, f"w{i}", {"action": "read"})
    await session.command("pager/31/action", "w-pager", {"action": "start"})


async def faulty_sensaphone(session: Session) -> None:
    sim = session.sensaphone
    await session.command(SCHEDULE, "r0", {"action": "read"})
    sim.fail_next(2, status=500)
    await session.command(SCHEDULE, "r1", {"action": "read"})
    sim.throttle_next(1, retry_after=0.2)
    await session.command(SCHEDULE, "r2", {"action": "create", "start": "07:00", "end": "08:00"})
    sim.expire_sessions()
    await session.command(SCHEDULE, "r3", {"action": "read"})
    sim.stall_next(3, 1.5)
    await session.command(SCHEDULE, "r4", {"action": "read"})  # times out: a dead letter
    await session.pager_sim.set_silent(True)
    await session.command("pager/32/action", "r5", {"action": "start"})
    await session.pager_sim.set_silent(False)


async def test_no_secret_leaks(
    secure_broker: Mosquitto,
    secure: SecureSetup,
    pager_sim: PagerSimulator,
    sensaphone: SensaphoneSimulator,
    tmp_path: Path,
) -> None:
    """Three bridge processes at DEBUG over mqtts:// with the password in the URL: a wrong
    Sensaphone password, then the right one in URI mode (session token in every path) with
    500s, 429s, a timeout into a dead letter and an expired session, then a wrong MQTT password.
    """
    stderr = tmp_path / "bridge.log"
    session = Session(secure_broker, secure, pager_sim, sensaphone, stderr)
    async with session.client:
        started = time.monotonic()
        metrics = [
            await session.serve(BRIDGE_PASSWORD, WRONG_SENSAPHONE_PASSWORD, wrong_sensaphone),
            await session.serve(
                BRIDGE_PASSWORD,
                SENSAPHONE_PASSWORD,
                faulty_sensaphone,
                IOTBRIDGE_SENSAPHONE_MODE="uri",
                IOTBRIDGE_SENSAPHONE_TIMEOUT="1",
                IOTBRIDGE_SENSAPHONE_DEADLINE="2",
            ),
        ]
        refused = session.bridge(WRONG_MQTT_PASSWORD, SENSAPHONE_PASSWORD)
        refused.start()
        try:
            await asyncio.sleep(2.5)
            metrics.append(await asyncio.to_thread(refused.metrics))
        finally:
            refused.stop()
    seen, codes = session.seen, session.codes

    tokens = list(sensaphone.store._sessions)
    secrets = [
        BRIDGE_PASSWORD,
        WRONG_MQTT_PASSWORD,
        SENSAPHONE_PASSWORD,
        WRONG_SENSAPHONE_PASSWORD,
        *tokens,
    ]
    log = stderr.read_text(encoding="utf-8", errors="replace")
    places = {"stderr": log, "mqtt": b"\n".join(seen).decode("utf-8", "replace")}
    places |= {f"metrics{i}": m for i, m in enumerate(metrics)}
    leaks = [
        (secret, where) for secret in secrets for where, text in places.items() if secret in text
    ]
    summary(
        "secrets",
        secrets_checked=len(secrets),
        session_tokens=len(tokens),
        log_lines=len(log.splitlines()),
        mqtt_messages=len(seen),
        leaks=len(leaks),
        total_s=time.monotonic() - started,
    )
    assert codes == [
        "auth_failed", "auth_failed", "auth_failed", "ok",
        "ok", "ok", "ok", "ok", "upstream_timeout", "upstream_timeout",
    ]  # fmt: skip
    assert len(tokens) == 2  # one per login of the second process: both were in use
    assert any(s.startswith(b"bridge/deadletter ") for s in seen)  # the timed-out read
    assert "DEBUG" in log
    assert "refused our credentials" in log
    # The simulator's plain HTTP is allowed here, and said at every start.
    assert log.count("WARNING bridge.config [-] insecure: sensaphone.url: http://") == 3
    assert not leaks, leaks


async def _until_ready(process: BridgeProcess) -> None:
    """Until the process reports its MQTT session up (its /metrics answer first)."""
    async with asyncio.timeout(20):
        while True:
            try:
                text = await asyncio.to_thread(process.metrics)
            except OSError:
                text = ""
            if 'iotbridge_mqtt_connected{site="default"} 1.0' in text:
                return
            await asyncio.sleep(0.1)
