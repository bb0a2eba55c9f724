"""The client side of one Observe registration (RFC 7641): what arrives, kept until consumed.

`bridge.coap.Transmitter.observe()` registers an `Inbox` as the `Listener` of its
registration's token on the observation's endpoint; the endpoint calls `notify` from its datagram
callback and `fail` when it fails or closes, and the observation's consumer awaits `get`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Final

from bridge.coapwire import OBSERVE, Message, to_uint
from bridge.errors import UpstreamError, UpstreamTimeout

# RFC 7641 §3.4: sequence numbers are 24-bit; a notification older than the newest is stale
# (dropped) unless 128 s have passed since the newest one arrived.
_SEQUENCE_HALF: Final = 1 << 23
_SEQUENCE_STALE_AFTER: Final = 128.0


class Inbox:
    """Every notification, in order, until the consumer takes it (at most `backlog`).

    RFC 7641 lets a client keep only the newest notification ("eventual consistency"); the
    bridge turns each change into an event, so it keeps them all. Past the bound the observation
    fails with UpstreamError: the caller re-registers and re-reads the full list instead of
    silently missing changes. Notifications older than the newest one (§3.4) are dropped. One
    timer, rescheduled lazily, notices when nothing arrived for `idle` seconds.
    """

    __slots__ = (
        "_backlog",
        "_error",
        "_idle",
        "_items",
        "_last",
        "_loop",
        "_sequence",
        "_stamp",
        "_timeout",
        "_timer",
        "_waiter",
        "ended",
        "registered",
    )

    def __init__(self, backlog: int, timeout: str, detail: dict[str, str]) -> None:
        self._backlog = backlog
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[Message] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sequence: int | None = None
        self._stamp = 0.0  # when the newest notification arrived (the §3.4 T1)
        self._last = 0.0  # when anything last arrived
        self._idle = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = (timeout, detail)
        self.ended = False  # the device ended the observation (its last message is queued)
        self.registered = False

    def notify(self, message: Message) -> bool:
        """From the endpoint: one message for the registration's token; False rejects it."""
        if self.ended or self._error is not None:
            return False
        now = self._last = self._loop.time()
        observe = message.option(OBSERVE)
        if observe is None or message.code >> 5 != 2:
            self.ended = True  # the final message (RFC 7641 §3.2): yielded, then the end
        else:
            sequence = to_uint(observe)
            newest = self._sequence
            if newest is not None and not (
                (newest < sequence and sequence - newest < _SEQUENCE_HALF)
                or (newest > sequence and newest - sequence > _SEQUENCE_HALF)
                or now > self._stamp + _SEQUENCE_STALE_AFTER
            ):
                return True  # stale or duplicate: acknowledged, not delivered
            self._sequence = sequence
            self._stamp = now
        if len(self._items) >= self._backlog:
            self.fail(UpstreamError(f"more than {self._backlog} notifications unconsumed"))
            return False
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def begin(self, response: Message) -> None:
        """The registration's response: registered or not, and the first sequence number."""
        observe = response.option(OBSERVE)
        # A reply without the Observe option (or an error) means we are not registered.
        self.registered = response.code >> 5 == 2 and observe is not None
        if observe is not None and self._sequence is None:
            self._sequence = to_uint(observe)
            self._stamp = self._loop.time()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def watch(self, idle: float) -> None:
        """Start the idle timer (after the registration was answered)."""
        self._idle = idle
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + idle, self._check_idle)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        due = self._last + self._idle
        if self._loop.time() + 0.001 >= due:
            self._timer = None
            message, detail = self._timeout
            self.fail(UpstreamTimeout(message, detail=detail))
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    async def get(self) -> Message | None:
        """The next message; None once the device ended it; raises what failed it."""
        while not self._items:
            if self._error is not None:
                raise self._error
            if self.ended:
                return None
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._items.popleft()
