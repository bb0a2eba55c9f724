"""Server side of CoAP Observe (RFC 7641) for `bridge.sim.coap_server`: who observes, and what next.

An observer is a (remote, token) pair that registered with a GET carrying Observe 0. It gets
every notification, in order, each as a confirmable message with the next Observe sequence
number (24 bits, wrapping): one notification in flight at a time per observer, the rest queued
(at most BACKLOG). Not the "latest state only" RFC 7641 §4.5.2 would allow, because the bridge
republishes each change as an event.

An observer is dropped when a notification is not acknowledged (retransmissions exhausted), is
answered with an RST, the remote's port is reported unreachable, the client deregisters (a GET
with Observe 1, or without Observe, from the same remote and token), or its backlog overflows
(then it is told so with a 5.03, which ends the observation at the client, §3.2).

A notification too large for one datagram goes block-wise (RFC 7959 §3.4): block 0 carries the
Observe option and the client fetches the rest with plain GETs. The next notification waits
until the last block has been fetched (or the body expired from the server's cache), so the
client never finds a newer body under the blocks it is still collecting.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from bridge.sim.coap_request import Response

BACKLOG: Final = 10_000
HOLD_LIMIT: Final = 30.0  # seconds a block-wise notification may take to be fetched
SERVICE_UNAVAILABLE: Final = 163  # 5.03

Key = tuple[Any, bytes]  # (remote address, token)


class Observer:
    """One registration. `sent(acked)` is the callback of each notification's transmission."""

    __slots__ = (
        "_hold_timer",
        "_registry",
        "active",
        "addr",
        "busy",
        "held",
        "key",
        "path",
        "query",
        "queue",
        "sequence",
        "token",
    )

    def __init__(
        self, registry: Observers, key: Key, path: tuple[str, ...], query: tuple[str, ...]
    ) -> None:
        self._registry = registry
        self.key = key
        self.addr, self.token = key
        self.path = path
        self.query = query
        self.sequence = 0
        self.queue: collections.deque[Response] = collections.deque()
        self.busy = False  # a confirmable message to this observer awaits its ACK
        self.held: object = None  # a block-wise body whose last block is still to be fetched
        self.active = True
        self._hold_timer: asyncio.TimerHandle | None = None

    def push(self, note: Response) -> None:
        if len(self.queue) >= BACKLOG:
            self._registry.drop(self, SERVICE_UNAVAILABLE)
            return
        self.queue.append(note)
        if not self.busy and self.held is None:
            self._next()

    def _next(self) -> None:
        if not self.queue or not self.active:
            return
        self.sequence = (self.sequence + 1) & 0xFFFFFF
        self.busy = True
        self._registry.send(self, self.queue.popleft())

    def sent(self, acked: bool) -> None:
        """The last confirmable message to this observer was ACKed (True) or failed (False)."""
        self.busy = False
        if not self.active:
            return
        if not acked:
            self._registry.drop(self, None)
        elif self.held is None:
            self._next()

    def hold(self, body: object) -> None:
        """Send nothing more until `release(body)` (its last block fetched) or HOLD_LIMIT."""
        self.held = body
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        loop = asyncio.get_running_loop()
        self._hold_timer = loop.call_later(HOLD_LIMIT, self.release, body)

    def release(self, body: object) -> None:
        if self.held is not body:
            return
        self.held = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if not self.busy:
            self._next()

    def end(self) -> None:
        self.active = False
        self.queue.clear()
        self.held = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None


class Observers:
    """Every registration, by (remote, token). `send` transmits one notification."""

    def __init__(
        self,
        send: Callable[[Observer, Response], None],
        end: Callable[[Observer, int], None],
    ) -> None:
        self.send = send
        self._end = end
        self._by_key: dict[Key, Observer] = {}
        self.dropped = 0  # observers dropped by the server (not deregistered by the client)

    def __len__(self) -> int:
        return len(self._by_key)

    def register(self, key: Key, path: tuple[str, ...], query: tuple[str, ...]) -> Observer:
        """A new observer with sequence 0, or an existing one re-registering (next sequence)."""
        observer = self._by_key.get(key)
        if observer is None:
            observer = self._by_key[key] = Observer(self, key, path, query)
        else:
            observer.sequence = (observer.sequence + 1) & 0xFFFFFF
        return observer

    def remove(self, key: Key) -> None:
        """The client deregistered."""
        observer = self._by_key.pop(key, None)
        if observer is not None:
            observer.end()

    def drop(self, observer: Observer, code: int | None) -> None:
        """The server gives up on `observer`; with `code`, the client is told so."""
        if self._by_key.get(observer.key) is observer:
            del self._by_key[observer.key]
            self.dropped += 1
        observer.end()
        if code is not None:
            self._end(observer, code)

    def drop_remote(self, addr: Any) -> None:
        for observer in [o for o in self._by_key.values() if o.addr == addr]:
            self.drop(observer, None)

    def clear(self) -> None:
        """Forget everyone without a word (the server stops or falls silent)."""
        for observer in self._by_key.values():
            observer.end()
        self._by_key.clear()

    def broadcast(self, note: Response) -> None:
        for observer in list(self._by_key.values()):
            observer.push(note)
