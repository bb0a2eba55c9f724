"""Idempotency keys and redeliveries (bridge.core.dedup), and the cache's bounds."""

from __future__ import annotations

import pytest

from bridge.core import dedup
from bridge.core.dedup import Dedup, Reuse

START = dedup.digest(b"start")
CLEAR = dedup.digest(b"clear")


def test_a_key_with_the_same_command_is_a_retry_and_with_another_is_refused() -> None:
    cache = Dedup(600, 100, 1 << 20)
    identity, keyed = Dedup.identity("pager/1/action", "t1", None, b"{}")
    assert keyed
    assert cache.earlier(identity, keyed, START, dup=False) is None
    entry = cache.begin(identity, keyed, START)
    cache.finished(entry, b"first outcome")
    assert cache.earlier(identity, keyed, START, dup=False) is entry
    with pytest.raises(Reuse):
        cache.earlier(identity, keyed, CLEAR, dup=False)
    # The same key on another topic is another key.
    other, _ = Dedup.identity("pager/2/action", "t1", None, b"{}")
    assert cache.earlier(other, keyed, CLEAR, dup=False) is None


def test_without_a_key_only_a_broker_redelivery_matches() -> None:
    cache = Dedup(600, 100, 1 << 20)
    identity, keyed = Dedup.identity("pager/1/action", None, None, b"page")
    assert not keyed
    entry = cache.begin(identity, keyed, START)
    cache.finished(entry, b"result")
    assert cache.earlier(identity, keyed, START, dup=False) is None  # "page" twice on purpose
    assert cache.earlier(identity, keyed, START, dup=True) is entry  # the broker's redelivery


def test_entries_expire_after_the_window() -> None:
    now = [1000.0]
    cache = Dedup(10, 100, 1 << 20, clock=lambda: now[0])
    identity, keyed = Dedup.identity("t", "k", None, b"")
    cache.finished(cache.begin(identity, keyed, START), b"r")
    now[0] += 11
    assert cache.earlier(identity, keyed, CLEAR, dup=False) is None  # forgotten: free to reuse
    assert cache.size == (0, 0)


def test_bounded_in_count_and_in_bytes_with_keys_of_constant_size() -> None:
    forgotten: list[None] = []
    cache = Dedup(600, 3, 100, evicted=lambda: forgotten.append(None))
    for n in range(5):
        identity, keyed = Dedup.identity("t", None, bytes(65536) + bytes([n]), b"")
        assert len(identity) == 16  # 64 KiB of Correlation Data costs 16 bytes
        cache.finished(cache.begin(identity, keyed, START), b"x" * 10)
    assert cache.size == (3, 30)
    big, keyed = Dedup.identity("t", "big", None, b"")
    cache.finished(cache.begin(big, keyed, START), b"y" * 90)
    assert cache.size == (2, 100)  # the oldest made room
    huge, keyed = Dedup.identity("t", "huge", None, b"")
    entry = cache.begin(huge, keyed, START)
    cache.finished(entry, b"z" * 500)  # larger than the whole bound: not kept
    assert cache.size == (0, 0)
    assert cache.earlier(huge, keyed, START, dup=False) is None
    assert len(forgotten) == 7  # 2, 2, then 3 (the huge one too): each one counted
