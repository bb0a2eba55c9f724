"""Test helpers: an MQTT peer that behaves like a user's client, and a bridge runner."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import config
from bridge.app import Bridge
from bridge.sim.pager.server import PagerSimulator

Received = tuple[str, bytes, bool, Any]  # topic, payload, retain, properties


class Peer:
    """A plain MQTT client subscribed to everything, recording what it sees."""

    _ids = itertools.count(1)

    def __init__(self, port: int, *, v5: bool = True) -> None:
        self.port = port
        self.v5 = v5
        self.messages: list[Received] = []
        # Results by transaction, each decoded once as it arrives (a list: duplicates show).
        self.results: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._tx = itertools.count(1)

    async def __aenter__(self) -> Self:
        protocol = aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311
        self._client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"test-peer-{next(self._ids)}",
            protocol=protocol,
            socket_options=((6, 1, 1),),  # TCP_NODELAY
        )
        await self._client.__aenter__()
        await self._client.subscribe("#", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.value.endswith("/result"):
                self._note_result(payload)
            async with self._changed:
                self.messages.append(
                    (message.topic.value, payload, message.retain, message.properties)
                )
                self._changed.notify_all()

    def _note_result(self, payload: bytes) -> None:
        try:
            result = json.loads(payload)
        except ValueError:
            return
        if isinstance(result, dict) and "transaction" in result:
            self.results.setdefault(str(result["transaction"]), []).append(result)

    async def wait_answered(self, transactions: set[str], timeout: float = 30.0) -> None:
        """Wait until every transaction in `transactions` has at least one result."""
        async with asyncio.timeout(timeout), self._changed:
            while not transactions <= self.results.keys():
                await self._changed.wait()

    async def publish(
        self, topic: str, payload: bytes | str, *, properties: Properties | None = None
    ) -> None:
        assert self._client is not None
        data = payload.encode() if isinstance(payload, str) else payload
        await self._client.publish(topic, data, qos=1, properties=properties)

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0
    ) -> Received:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                await self._changed.wait()

    async def request(
        self, topic: str, body: dict[str, Any] | str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Publish a command with a fresh transaction and return its decoded result."""
        transaction = f"t{next(self._tx)}-{id(self)}"
        if isinstance(body, dict):
            payload = json.dumps({**body, "transaction": transaction})
            result_topic = f"{topic}/result"
            await self.publish(topic, payload)
            message = await self.wait_for(
                lambda m: (
                    m[0] == result_topic and json.loads(m[1]).get("transaction") == transaction
                ),
                timeout,
            )
            return dict(json.loads(message[1]))
        start = len(self.messages)
        await self.publish(topic, body)
        message = await self.wait_for(
            lambda m: m[0] == f"{topic}/result" and self.messages.index(m) >= start, timeout
        )
        return dict(json.loads(message[1]))

    async def request_v5(self, topic: str, payload: str, response_topic: str) -> Received:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response_topic
        props.CorrelationData = b"corr-1"
        await self.publish(topic, payload, properties=props)
        return await self.wait_for(lambda m: m[0] == response_topic)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m[0] == topic]

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(m[1]) if m[1] else None for m in self.on(topic)]


async def http_get(bridge: Bridge, path: str) -> str:
    """GET from the bridge's HTTP server, off the event loop the bridge runs on."""
    url = f"http://127.0.0.1:{bridge.probes.port}{path}"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


def settings(**env: str) -> config.Settings:
    """Settings from IOTBRIDGE_* variables given as keyword arguments (without the prefix)."""
    base = {
        "IOTBRIDGE_HTTP_ADDR": "127.0.0.1:0",
        "IOTBRIDGE_MQTT_RECONNECT_MIN": "0.05",
        "IOTBRIDGE_MQTT_RECONNECT_MAX": "0.5",
    }
    base.update({f"IOTBRIDGE_{k.upper()}": v for k, v in env.items()})
    return config.load(base)


@contextlib.asynccontextmanager
async def started_sim(**options: Any) -> AsyncIterator[PagerSimulator]:
    """A T7470 simulator on a free port, with a short ping period, stopped afterwards."""
    sim = PagerSimulator(**({"port": 0, "ping_interval": 0.5} | options))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def running(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Run `bridge` as a task until the block ends, then stop it gracefully."""
    task = asyncio.create_task(bridge.run(install_signals=False))
    try:
        async with asyncio.timeout(10):
            while not bridge.ready:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield bridge
    finally:
        bridge.stop()
        try:
            async with asyncio.timeout(15):
                await task
        finally:
            if not task.done():
                task.cancel()
