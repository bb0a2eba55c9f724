"""Remembered outcomes, so a redelivered command is answered again instead of carried out twice.

MQTT QoS 1 is at-least-once: after a reconnect the broker redelivers what the bridge had not yet
acknowledged, and a client may retry. A command is recognised by its topic plus its `transaction`
(or MQTT v5 Correlation Data); one without either cannot be told apart and is carried out again.
Bounded by count and age; the oldest are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict

Key = tuple[str, str]


class Answers:
    """Result payloads of recent commands, by (topic, transaction)."""

    def __init__(self, window: float, size: int) -> None:
        self._window = window
        self._size = size
        self._items: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()

    @staticmethod
    def key(topic: str, transaction: str | int | None, correlation: bytes | None) -> Key | None:
        if transaction is not None:
            return (topic, f"t:{transaction}")
        if correlation:
            return (topic, f"c:{correlation.hex()}")
        return None

    def get(self, key: Key | None) -> bytes | None:
        if key is None or self._size == 0:
            return None
        item = self._items.get(key)
        if item is None:
            return None
        if time.monotonic() - item[0] > self._window:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: Key | None, payload: bytes) -> None:
        if key is None or self._size == 0:
            return
        self._items[key] = (time.monotonic(), payload)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
