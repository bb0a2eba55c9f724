"""The server's own confirmable messages (RFC 7252 §4.2): retransmitted until ACKed or given up.

`bridge.sim.coap_server` sends separate responses and Observe notifications as CONs through
`Confirmables`. Each is retransmitted after ACK_TIMEOUT x random(1, ACK_RANDOM_FACTOR) seconds,
doubling, at most MAX_RETRANSMIT times, then abandoned one timeout after the last copy. How it
ended reaches its `done(acked)` callback once: True for the ACK, False for an RST, exhausted
retransmissions, or the remote reported unreachable. One `loop.call_later` handle per message.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from bridge.coapwire import ACK_RANDOM_FACTOR, ACK_TIMEOUT, MAX_RETRANSMIT

Address = tuple[Any, ...]
Done = Callable[[bool], None]
Send = Callable[[bytes, Address], None]


class _Transmission:
    """One CON awaiting its ACK."""

    __slots__ = ("addr", "data", "done", "handle", "key", "timeout", "tries")

    def __init__(self, key: tuple[Address, int], data: bytes, done: Done | None) -> None:
        self.key = key
        self.addr = key[0]
        self.data = data
        self.done = done
        self.timeout = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)  # noqa: S311
        self.tries = 0
        self.handle: asyncio.TimerHandle | None = None


class Confirmables:
    """Our CONs in flight, by (remote, MID); `send` puts a datagram on the wire."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: dict[tuple[Address, int], _Transmission] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def send(self, addr: Address, mid: int, data: bytes, done: Done | None) -> None:
        """Send `data` (a CON with message ID `mid`) to `addr` until it is answered."""
        transmission = _Transmission((addr, mid), data, done)
        self._pending[transmission.key] = transmission
        loop = asyncio.get_running_loop()
        transmission.handle = loop.call_later(transmission.timeout, self._again, transmission)
        self._send(data, addr)

    def answered(self, addr: Address, mid: int, *, acked: bool) -> None:
        """An ACK (acked) or RST for (addr, mid) arrived; unknown ones are ignored."""
        transmission = self._pending.pop((addr, mid), None)
        if transmission is None:
            return
        if transmission.handle is not None:
            transmission.handle.cancel()
        if transmission.done is not None:
            transmission.done(acked)

    def fail_remote(self, addr: Address) -> None:
        """`addr` is unreachable: every CON to it has failed."""
        for key in [key for key in self._pending if key[0] == addr]:
            self.answered(addr, key[1], acked=False)

    def clear(self) -> None:
        """Forget everything in flight without telling anyone."""
        for transmission in self._pending.values():
            if transmission.handle is not None:
                transmission.handle.cancel()
        self._pending.clear()

    def _again(self, transmission: _Transmission) -> None:
        if self._pending.get(transmission.key) is not transmission:
            return
        if transmission.tries >= MAX_RETRANSMIT:
            self.answered(transmission.addr, transmission.key[1], acked=False)
            return
        transmission.tries += 1
        transmission.timeout *= 2
        loop = asyncio.get_running_loop()
        transmission.handle = loop.call_later(transmission.timeout, self._again, transmission)
        self._send(transmission.data, transmission.addr)
