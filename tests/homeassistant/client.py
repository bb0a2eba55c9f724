"""What a test asks of Home Assistant: its REST API and its websocket API, as a user's tools do.

States and service calls go through REST (`/api/states`, `/api/services/...`); the device and
entity registries, and a live feed of state changes, through the websocket API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.homeassistant.server import HomeAssistantServer

State = dict[str, Any]
T = TypeVar("T")


class HomeAssistant:
    """An authenticated client of one running Home Assistant."""

    def __init__(self, server: HomeAssistantServer) -> None:
        self.server = server
        self._http = httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=20,
        )
        self._socket: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._feeds: dict[int, Callable[[dict[str, Any]], None]] = {}
        # Every state change since the client started, in order: (entity_id, new state).
        self.changes: list[tuple[str, State | None]] = []
        self._tick = asyncio.Event()  # set (and replaced) on every change

    async def __aenter__(self) -> Self:
        socket = await connect(f"ws://127.0.0.1:{self.server.port}/api/websocket", max_size=None)
        await socket.recv()  # auth_required
        await socket.send(json.dumps({"type": "auth", "access_token": self.server.token}))
        assert json.loads(await socket.recv())["type"] == "auth_ok"
        self._socket = socket
        self._reader = asyncio.create_task(self._read())
        await self.subscribe("state_changed", self._note)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._socket is not None:
            await self._socket.close()
        await self._http.aclose()

    # -- websocket -------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._socket is not None
        async for raw in self._socket:
            message = json.loads(raw)
            ident = message.get("id")
            if message.get("type") == "event" and ident in self._feeds:
                self._feeds[ident](message["event"])
            elif ident in self._replies:
                self._replies.pop(ident).set_result(message)

    async def ws(self, kind: str, **fields: Any) -> Any:
        """One websocket command; its `result`, or AssertionError with HA's error."""
        assert self._socket is not None
        ident = next(self._ids)
        reply = self._replies[ident] = asyncio.get_running_loop().create_future()
        await self._socket.send(json.dumps({"id": ident, "type": kind, **fields}))
        message = await asyncio.wait_for(reply, 20)
        assert message.get("success"), message
        return message.get("result")

    async def subscribe(self, event_type: str, feed: Callable[[dict[str, Any]], None]) -> None:
        assert self._socket is not None
        ident = next(self._ids)
        self._feeds[ident] = feed
        reply = self._replies[ident] = asyncio.get_running_loop().create_future()
        await self._socket.send(
            json.dumps({"id": ident, "type": "subscribe_events", "event_type": event_type})
        )
        assert (await asyncio.wait_for(reply, 20)).get("success")

    def _note(self, event: dict[str, Any]) -> None:
        data = event["data"]
        self.changes.append((data["entity_id"], data.get("new_state")))
        self._tick.set()
        self._tick = asyncio.Event()

    async def devices(self) -> list[dict[str, Any]]:
        return list(await self.ws("config/device_registry/list"))

    async def entities(self) -> list[dict[str, Any]]:
        return list(await self.ws("config/entity_registry/list"))

    async def mqtt_entities(self, node: str) -> dict[str, dict[str, Any]]:
        """MQTT entities whose unique id belongs to discovery node `node`, by entity id."""
        return {
            e["entity_id"]: e
            for e in await self.entities()
            if e["platform"] == "mqtt" and str(e.get("unique_id", "")).startswith(f"{node}_")
        }

    async def reload_mqtt(self) -> None:
        """Reload the MQTT integration: it reconnects and sends its birth message again."""
        entry = self.server.mqtt_entry
        response = await self._http.post(f"/api/config/config_entries/entry/{entry}/reload")
        assert response.status_code == 200, response.text

    # -- REST ------------------------------------------------------------------------------

    async def state(self, entity_id: str) -> State | None:
        response = await self._http.get(f"/api/states/{entity_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    async def states(self) -> dict[str, State]:
        response = await self._http.get("/api/states")
        response.raise_for_status()
        return {s["entity_id"]: s for s in response.json()}

    async def call(self, domain: str, service: str, **data: Any) -> None:
        response = await self._http.post(f"/api/services/{domain}/{service}", json=data)
        assert response.status_code == 200, response.text

    async def press(self, entity_id: str) -> None:
        await self.call("button", "press", entity_id=entity_id)

    @contextlib.asynccontextmanager
    async def automation(self, config: dict[str, Any]) -> AsyncIterator[None]:
        """`config` as an automation, saved as HA's automation editor does, for the block."""
        path = f"/api/config/automation/config/{config['id']}"
        response = await self._http.post(path, json=config)
        assert response.status_code == 200, response.text
        try:
            yield
        finally:
            await self._http.delete(path)

    async def notifications(self) -> list[dict[str, Any]]:
        return list(await self.ws("persistent_notification/get"))

    # -- waiting ---------------------------------------------------------------------------

    async def until(
        self, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 20.0
    ) -> T:
        """`probe()` again after each state change (and each second) until `done` holds;
        AssertionError with the last value."""
        value: T | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick
                    value = await probe()
                    if done(value):
                        return value
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(tick.wait(), 1.0)
        except TimeoutError:
            raise AssertionError(f"never matched; last: {value}") from None

    async def wait_state(
        self, entity_id: str, check: Callable[[State | None], bool], timeout: float = 20.0
    ) -> State | None:
        """`entity_id`'s state once `check(state)` holds."""
        try:
            return await self.until(lambda: self.state(entity_id), check, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{entity_id}: {exc}") from None

    async def wait_change(
        self, entity_id: str, check: Callable[[State], bool], after: int = 0, timeout: float = 20.0
    ) -> State:
        """The first recorded change of `entity_id` (from index `after`) for which `check`
        holds: catches events that the next one would hide from a poll."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick
                    for entity, state in self.changes[after:]:
                        if entity == entity_id and state is not None and check(state):
                            return state
                    await tick.wait()
        except TimeoutError:
            seen = [s for e, s in self.changes[after:] if e == entity_id]
            raise AssertionError(f"{entity_id}: no matching change; seen {seen}") from None
