"""Idempotency: a retried or redelivered command is answered, never carried out twice.

MQTT QoS 1 is at-least-once. Two things bring a command back:

- **A client retry.** `transaction` (or MQTT 5 Correlation Data) is an idempotency key, as in
  payment APIs: the same key with the same command within `window` seconds is a retry and gets
  the first outcome again; the same key with a *different* command is refused (`Reuse`) and
  not carried out: the key was already spent.
- **A broker redelivery** (DUP set): the bridge received the command, and the broker did not
  see our acknowledgement before the connection dropped. If the first delivery's result was
  published, the redelivery is only acknowledged: one execution, one result. Recognised by key,
  or, for commands without one, by topic and payload.

Entries are keyed by a digest (Correlation Data may be 64 KiB), and the cache is bounded in
count and in bytes of remembered results; the oldest are forgotten first.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

# Digest size: 128 bits, collisions out of reach for any number of commands.
_DIGEST: Final = 16


class Entry:
    """What is remembered of one command."""

    __slots__ = ("at", "fingerprint", "held", "keyed", "published", "result")

    def __init__(self, fingerprint: bytes, keyed: bool, at: float) -> None:
        self.at = at
        self.fingerprint = fingerprint
        self.keyed = keyed
        self.held = False  # in the cache (its result's bytes counted)
        self.result: bytes | None = None  # the result payload, once there is one
        self.published = False  # the broker acknowledged the result


class Reuse(Exception):
    """The idempotency key was already used, within the window, for a different command."""


def digest(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"\0".join(parts), digest_size=_DIGEST).digest()


class Dedup:
    """Recent commands by identity: the key if they have one, else topic and payload."""

    def __init__(
        self,
        window: float,
        size: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        evicted: Callable[[], None] = lambda: None,
    ) -> None:
        """`evicted()` is called for each entry forgotten within its window because the size
        or byte bound was reached: a retry of that command would be carried out again."""
        self._clock = clock
        self._evicted = evicted
        self._window = window
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[bytes, Entry] = OrderedDict()

    @staticmethod
    def identity(
        topic: str, transaction: str | int | None, correlation: bytes | None, payload: bytes
    ) -> tuple[bytes, bool]:
        """(digest, keyed): by `transaction`, else Correlation Data, else the payload itself."""
        if transaction is not None:
            return digest(topic.encode(), b"t", str(transaction).encode()), True
        if correlation:
            return digest(topic.encode(), b"c", correlation), True
        return digest(topic.encode(), b"p", payload), False

    def earlier(self, identity: bytes, keyed: bool, fingerprint: bytes, dup: bool) -> Entry | None:
        """The entry that answers this delivery, if any; raises Reuse for a spent key.

        A keyed command matches any retry; an unkeyed one only a broker redelivery (DUP), since
        a client may well send the same "page" twice on purpose.
        """
        if self._size == 0:
            return None
        entry = self._items.get(identity)
        if entry is None:
            return None
        if self._clock() - entry.at > self._window:
            self._forget(identity)
            return None
        if entry.fingerprint != fingerprint:
            if keyed:
                raise Reuse
            return None
        return entry if keyed or dup else None

    def begin(self, identity: bytes, keyed: bool, fingerprint: bytes) -> Entry:
        """Remember a command being carried out now."""
        entry = Entry(fingerprint, keyed, self._clock())
        if self._size:
            self._forget(identity)
            self._items[identity] = entry
            entry.held = True
            self._trim()
        return entry

    def finished(self, entry: Entry, result: bytes) -> None:
        """The command's result payload (its bytes count against the bound while held)."""
        entry.result = result
        if entry.held:
            self._bytes += len(result)
            self._trim()

    @property
    def size(self) -> tuple[int, int]:
        """Entries and bytes of results held."""
        return len(self._items), self._bytes

    def _forget(self, identity: bytes) -> None:
        entry = self._items.pop(identity, None)
        if entry is not None:
            self._release(entry)

    def _release(self, entry: Entry) -> None:
        entry.held = False
        if entry.result is not None:
            self._bytes -= len(entry.result)

    def _trim(self) -> None:
        items = self._items
        while items and (len(items) > self._size or self._bytes > self._max_bytes):
            _, oldest = items.popitem(last=False)
            self._release(oldest)
            if self._clock() - oldest.at <= self._window:
                self._evicted()
