"""MQTT's own rules for topic names and filters (MQTT 5, section 4.7), and what the link is told
of the application: nothing here knows the bridge's contract.
"""

from __future__ import annotations

from typing import NamedTuple


class Channels(NamedTuple):
    """What the link subscribes to and where it says whether the bridge is up, given by the
    application (`bridge.contract.topics.Topics.channels`)."""

    subscriptions: list[str]
    state_topic: str
    online: bytes
    offline: bytes


def is_publishable(topic: str) -> bool:
    """True for a concrete topic name: not empty, no wildcard, no NUL, not a `$` system topic."""
    # On every publish: substring tests, not a set of the topic's characters (10x slower).
    return (
        bool(topic)
        and topic[0] != "$"
        and "+" not in topic
        and "#" not in topic
        and "\0" not in topic
    )


def is_filter(topic_filter: str) -> bool:
    """A valid MQTT topic filter: not empty, `+` a whole level, `#` only the whole last one."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            return False
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
    return True


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (spec 4.7): `+` one level, `#` the rest; `$` topics only explicitly."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level not in ("+", levels[i])):
            return False
    return len(wanted) == len(levels)
