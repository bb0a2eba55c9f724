"""What a command publishes besides its result, awaited together with the result.

A pager command typically publishes a retained session, an event and the statistics before its
result. Waiting for each of those PUBACKs before sending the result would put a broker round
trip (or several) on every command's path; not waiting at all would acknowledge a command whose
state might not be out. So the dispatcher hands each command an `Outbox`: the features `send()`
their publishes into it (started at once, in order), and the dispatcher awaits them together
with the result before it acknowledges the command. The wire order is unchanged: the state
publishes are started before the result's. Outside a command (notifications, reconnects) there
is no outbox: the features `await` their publishes themselves (`deliver`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol


class Outbound(NamedTuple):
    """One message to publish (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool


# Starts publishing `out` at once, in order; the awaitable completes when all were acknowledged.
Publish = Callable[[list[Outbound]], Awaitable[object]]


class Outbox:
    """One command's publishes besides its result."""

    __slots__ = ("_publish", "started")

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self.started: list[Awaitable[object]] = []

    def send(self, out: list[Outbound]) -> None:
        """Start publishing `out` now; the command is acknowledged only once it is out."""
        if out:
            self.started.append(self._publish(out))


async def deliver(out: list[Outbound], box: Outbox | None, publish: Publish) -> None:
    """Into the command's outbox if there is one, else published and awaited here."""
    if box is not None:
        box.send(out)
    elif out:
        await publish(out)


class Soon(Protocol):
    """What `publisher` needs of the MQTT link (bridge.mqtt.link.MqttLink)."""

    def publish_soon(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> Awaitable[None]: ...


def publisher(link: Soon) -> Publish:
    """A `Publish` on `link`: every message handed over now, in order, awaited together."""

    def publish(out: list[Outbound]) -> Awaitable[object]:
        return asyncio.gather(
            *[link.publish_soon(o.topic, o.payload, retain=o.retain) for o in out]
        )

    return publish
