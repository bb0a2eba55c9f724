"""What a command publishes besides its result, awaited together with the result.

A pager command typically publishes a retained session, an event and the statistics before its
result. Waiting for each of those PUBACKs before sending the result would put a broker round
trip (or several) on every command's path; not waiting at all would acknowledge a command whose
state might not be out. So the dispatcher opens an outbox per command (`collecting()`), features
put their publishes in it (`send()`) instead of awaiting them, and the dispatcher awaits them
together with the result before it acknowledges the command. The wire order is unchanged: the
state publishes are started before the result's. Outside a command (notifications, reconnects)
there is no outbox and `send()` awaits the publishes itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import NamedTuple


class Outbound(NamedTuple):
    """One message to publish (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool


# Starts publishing `out` at once, in order; the awaitable completes when all were acknowledged.
Publish = Callable[[list[Outbound]], Awaitable[object]]

_current: ContextVar[list[Awaitable[object]] | None] = ContextVar("outbox", default=None)


async def send(work: Awaitable[object]) -> None:
    """Put started publishes in the current command's outbox, or await them if there is none."""
    box = _current.get()
    if box is None:
        await work
    else:
        box.append(work)


@contextlib.contextmanager
def collecting() -> Iterator[list[Awaitable[object]]]:
    """An outbox for the code run inside the block; the caller awaits what it collected."""
    box: list[Awaitable[object]] = []
    token = _current.set(box)
    try:
        yield box
    finally:
        _current.reset(token)
