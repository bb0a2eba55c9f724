"""Fault-tier helpers: a client that rides out broker restarts, a result ledger, a bridge process.

`DurableClient` is what a careful user's client looks like: a persistent MQTT v5 session under a
fixed id, QoS 1 both ways, and a publish that is repeated on the next connection until the broker
acknowledges it. `Ledger` counts commands and results by transaction, so every test can say how
many were lost and how many were answered twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.dev.mosquitto import free_port

NODELAY = ((6, 1, 1),)  # IPPROTO_TCP, TCP_NODELAY, on
OnMessage = Callable[[str, bytes, Any], None]


def properties(**values: Any) -> Properties:
    """MQTT v5 PUBLISH properties, e.g. `properties(ResponseTopic="r", CorrelationData=b"1")`."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class DurableClient:
    """A persistent-session MQTT v5 client that reconnects and re-publishes until acknowledged."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        subscriptions: Iterable[str] = (),
        on_message: OnMessage | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.username, self.password, self.tls_context = username, password, tls_context
        self.connects = 0
        self.republished = 0  # publishes that needed another attempt
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"durable-{self.client_id}")
        async with asyncio.timeout(10):
            await self._up.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _make(self) -> aiomqtt.Client:
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = 3600
        client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
            username=self.username,
            password=self.password,
            tls_context=self.tls_context,
            socket_options=NODELAY,
            timeout=5,
            max_inflight_messages=100,
        )
        client.pending_calls_threshold = 100_000
        return client

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with self._make() as client:
                    self.connects += 1
                    if self.subscriptions:
                        await client.subscribe([(s, 1) for s in self.subscriptions])
                    self._client = client
                    self._up.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        if self.on_message is not None:
                            self.on_message(message.topic.value, payload, message.properties)
            self._up.clear()
            self._client = None
            await asyncio.sleep(0.1)

    async def publish(
        self, topic: str, payload: bytes | str, props: Properties | None = None
    ) -> None:
        """Publish at QoS 1; repeat on the next connection until the broker acknowledges it."""
        data = payload.encode() if isinstance(payload, str) else payload
        first = True
        while True:
            await self._up.wait()
            client = self._client
            if client is not None:
                try:
                    await client.publish(topic, data, qos=1, properties=props, timeout=3)
                except aiomqtt.MqttError:
                    pass
                else:
                    return
            if first:
                self.republished += 1
                first = False
            await asyncio.sleep(0.05)


class Ledger:
    """Commands sent and results received, by transaction."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}  # transaction -> command topic
        self.results: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.first_at: dict[str, float] = {}
        self.changed = asyncio.Event()

    def command(self, topic: str, transaction: str, body: dict[str, Any]) -> bytes:
        self.sent[transaction] = topic
        return json.dumps({**body, "transaction": transaction}).encode()

    def on_message(self, topic: str, payload: bytes, _props: Any = None) -> None:
        if not topic.endswith("/result"):
            return
        try:
            result = json.loads(payload)
        except ValueError:
            return
        transaction = result.get("transaction") if isinstance(result, dict) else None
        if isinstance(transaction, str):
            self.results[transaction].append(result)
            self.first_at.setdefault(transaction, time.monotonic())
            self.changed.set()

    @property
    def answered(self) -> int:
        return sum(1 for t in self.sent if self.results.get(t))

    def lost(self) -> list[str]:
        return [t for t in self.sent if not self.results.get(t)]

    def duplicates(self) -> list[str]:
        return [t for t in self.sent if len(self.results.get(t, ())) > 1]

    def statuses(self) -> collections.Counter[str]:
        """Outcome of each transaction's first result: `ok` or the error code."""
        counts: collections.Counter[str] = collections.Counter()
        for t in self.sent:
            if self.results.get(t):
                first = self.results[t][0]
                counts["ok" if first["status"] == "ok" else first["error"]["code"]] += 1
        return counts

    async def wait_all(self, timeout: float) -> None:
        """Until every command has a result; on timeout the caller's asserts tell what is lost."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.lost():
                    self.changed.clear()
                    await self.changed.wait()

    async def wait_count(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while self.answered < count:
                self.changed.clear()
                await self.changed.wait()


def summary(scenario: str, **figures: object) -> None:
    """One line per scenario under `pytest -s`; docs/reliability.md quotes these."""
    text = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[faults] {scenario}: {text}")  # noqa: T201 - the figures are the point


def fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample (0 if absent); labels given must all match."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


class BridgeProcess:
    """`python -m bridge run` with its configuration in the environment and stderr kept."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        self.http_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
        self.env.update(
            IOTBRIDGE_HTTP_ADDR=f"127.0.0.1:{self.http_port}",
            IOTBRIDGE_MQTT_RECONNECT_MIN="0.05",
            IOTBRIDGE_MQTT_RECONNECT_MAX="0.5",
        )
        self.env.update(env)
        self.stderr_path = stderr_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def metrics(self) -> str:
        return fetch_metrics(self.http_port)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def readme_acl() -> str:
    """The bridge's Mosquitto ACL exactly as README.md ("Security") gives it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("**Broker ACL.**", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert block.startswith("user iotbridge\n"), block[:40]
    return block


# Anonymous clients get nothing (no rule before the first `user`); the bridge's user is called
# `bridge` here; `client` is a user's client that sends commands and follows the results.
BRIDGE_ACL = (
    readme_acl().replace("user iotbridge\n", "user bridge\n", 1)
    + """
user client
topic write pager/+/action
topic write schedule/+/timerange
topic read pager/#
topic read schedule/#
topic read bridge/#
"""
)


class SecureSetup:
    """Files for a TLS + password + ACL broker: CA, server certificate, passwords, ACL."""

    def __init__(self, directory: Path, passwords: dict[str, str]) -> None:
        import trustme  # noqa: PLC0415 - a dev dependency, only this tier needs it

        self.passwords = passwords
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = directory / "ca.pem"
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.password_file = directory / "passwords"
        self.password_file.touch()
        for user, password in passwords.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(self.password_file), user, password],
                check=True,
                capture_output=True,
            )
        self.acl_file = directory / "acl"
        self.acl_file.write_text(BRIDGE_ACL, encoding="utf-8")

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))
