"""Every MQTT topic the bridge reads or writes is parsed or built here, and nowhere else.

The contract (README "Topics"): all topics take an optional prefix, `bridge/state` included.
Parsing is pure and strict: a topic segment that is not a plain positive integer where a number is
expected is an `InvalidTopic`, so no input can steer the bridge into a wildcard or foreign topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

import msgspec

from bridge.contract.models import OFFLINE, ONLINE
from bridge.errors import InvalidTopic
from bridge.mqtt.names import Channels, matches

BASE: Final = "base"


class PagerTopic(msgspec.Struct, frozen=True):
    """`pager/<number>/action`."""

    number: int


class BaseTopic(msgspec.Struct, frozen=True):
    """`pager/base/action`: base-station-wide commands."""


class ScheduleTopic(msgspec.Struct, frozen=True):
    """`schedule/<schedule_id>/timerange`."""

    schedule_id: int


CommandTopic = PagerTopic | BaseTopic | ScheduleTopic
Route = Literal["pager", "pager_base", "schedule"]


class ResponseTopics:
    """Where results may also go: a request's Response Topic, if it matches an allowed filter
    (`mqtt.response_topics`) and lies in no namespace the bridge serves or announces (every
    site's topics, the Home Assistant discovery prefix)."""

    def __init__(self, allowed: list[str], reserved: Callable[[str], bool]) -> None:
        self._allowed = allowed
        self._reserved = reserved

    def __call__(self, topic: str) -> str | None:
        """None if `topic` may be answered, else why not (a metric label)."""
        if self._reserved(topic):
            return "reserved"
        if not any(matches(f, topic) for f in self._allowed):
            return "not_allowed"
        return None


def _id_segment(segment: str, what: str, minimum: int, maximum: int) -> int:
    # isdecimal() also accepts non-ASCII digits; the contract says ASCII integers.
    if not (segment.isascii() and segment.isdigit()) or len(segment) > 10:
        raise InvalidTopic(f"{what} must be a positive integer, got {segment[:40]!r}")
    value = int(segment)
    if not minimum <= value <= maximum:
        raise InvalidTopic(f"{what} must be between {minimum} and {maximum}, got {value}")
    return value


class Topics:
    """Builds and parses the topics of one site (one prefix)."""

    __slots__ = (
        "_cache",
        "_max_number",
        "_min_number",
        "_pager_prefix",
        "_schedule_prefix",
        "bridge_state",
        "deadletter",
        "observer",
        "prefix",
        "statistics",
    )

    def __init__(self, prefix: str = "", *, min_number: int = 1, max_number: int = 65535) -> None:
        self.prefix = prefix.strip("/")
        root = f"{self.prefix}/" if self.prefix else ""
        self._pager_prefix = f"{root}pager/"
        self._schedule_prefix = f"{root}schedule/"
        self._min_number, self._max_number = min_number, max_number
        self.bridge_state = f"{root}bridge/state"
        self.deadletter = f"{root}bridge/deadletter"
        # Replicas sharing a site: the retained claim of the one that observes the transmitter.
        self.observer = f"{root}bridge/observer"
        self.statistics = f"{root}pager/statistics"
        # Per-number topics are built once: pager numbers are few and reused constantly.
        self._cache: dict[tuple[str, int], str] = {}

    # -- subscriptions ---------------------------------------------------------------------

    def subscriptions(self, shared_group: str = "") -> list[str]:
        filters = [f"{self._pager_prefix}+/action", f"{self._schedule_prefix}+/timerange"]
        if shared_group:
            return [f"$share/{shared_group}/{f}" for f in filters]
        return filters

    def channels(self, shared_group: str = "") -> Channels:
        """What the MQTT link subscribes to, and where and how it says the bridge is up."""
        return Channels(self.subscriptions(shared_group), self.bridge_state, ONLINE, OFFLINE)

    # -- parsing ---------------------------------------------------------------------------

    def parse(self, topic: str) -> CommandTopic:
        """Map an inbound topic to what it addresses; InvalidTopic if it is not a command topic."""
        if topic.startswith(self._pager_prefix):
            middle, sep, tail = topic[len(self._pager_prefix) :].partition("/")
            if sep and tail == "action":
                if middle == BASE:
                    return BaseTopic()
                return PagerTopic(
                    _id_segment(middle, "pager number", self._min_number, self._max_number)
                )
        elif topic.startswith(self._schedule_prefix):
            middle, sep, tail = topic[len(self._schedule_prefix) :].partition("/")
            if sep and tail == "timerange":
                schedule_id = _id_segment(middle, "schedule id", 1, 2**31 - 1)
                return ScheduleTopic(schedule_id)
        raise InvalidTopic(f"not a command topic: {topic[:120]!r}")

    def in_namespace(self, topic: str) -> bool:
        """True if `topic` is one of the bridge's own; a client may not redirect output there."""
        root = f"{self.prefix}/" if self.prefix else ""
        return topic.startswith((self._pager_prefix, self._schedule_prefix, f"{root}bridge/"))

    # -- building --------------------------------------------------------------------------

    @staticmethod
    def result(command_topic: str) -> str:
        return f"{command_topic}/result"

    def is_pager_number(self, number: object) -> bool:
        """True for a number this site serves: what a device value must be to become a topic."""
        return (
            isinstance(number, int)
            and not isinstance(number, bool)
            and self._min_number <= number <= self._max_number
        )

    def _pager(self, number: int, leaf: str) -> str:
        key = (leaf, number)
        topic = self._cache.get(key)
        if topic is None:
            if len(self._cache) > 100_000:  # bounded: numbers are capped, but be safe
                self._cache.clear()
            topic = self._cache[key] = f"{self._pager_prefix}{number}/{leaf}"
        return topic

    def pager_action(self, number: int) -> str:
        return self._pager(number, "action")

    def pager_session(self, number: int) -> str:
        return self._pager(number, "session")

    @property
    def pager_sessions(self) -> str:
        """The filter of every retained session topic."""
        return f"{self._pager_prefix}+/session"

    def session_number(self, topic: str) -> int | None:
        """The pager number of a `pager/<number>/session` topic of this site, else None."""
        if not topic.startswith(self._pager_prefix) or not topic.endswith("/session"):
            return None
        middle = topic[len(self._pager_prefix) : -len("/session")]
        if not (middle.isascii() and middle.isdigit()) or len(middle) > 10:
            return None
        number = int(middle)
        return number if self.is_pager_number(number) else None

    def pager_event(self, number: int) -> str:
        return self._pager(number, "event")

    def base_action(self) -> str:
        return f"{self._pager_prefix}{BASE}/action"

    def schedule_command(self, schedule_id: int) -> str:
        return f"{self._schedule_prefix}{schedule_id}/timerange"

    def schedule_ranges(self, schedule_id: int) -> str:
        return f"{self._schedule_prefix}{schedule_id}/timeranges"
