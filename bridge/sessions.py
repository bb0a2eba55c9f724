"""Session tracking: turns what the transmitter reports into events and retained state. Pure.

Every source of session data goes through `SessionTracker.apply`: replies to the bridge's own
commands, Observe notifications (changes made by anyone, the restaurant's console too), polls of
the full list, and history items (which carry how a session ended). Because the tracker compares
against what it last saw, a change reported twice (in our reply and again in a notification)
yields one event, not two.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, NamedTuple

import msgspec

from bridge import t7470
from bridge.models import ENCODER, Event
from bridge.topics import Topics

EventName = Literal["started", "paged", "cleared", "removed", "updated"]
_ENDED_MEMORY = 4096
_FIELDS = ("label", "goalInSeconds", "partySize")


class Outbound(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


# Starts publishing `out` at once, in order; the awaitable completes when all were acknowledged.
Publish = Callable[[list[Outbound]], Awaitable[object]]


class SessionTracker:
    """What the bridge believes is active on one transmitter, and what it has published."""

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self.active: dict[int, t7470.Session] = {}
        # Ids of sessions whose end was already published (bounded: oldest forgotten first).
        self._ended: OrderedDict[int, None] = OrderedDict()
        self._statistics: bytes | None = None
        self.events: list[EventName] = []  # names of events produced by the last apply()

    def apply(self, sessions: Iterable[t7470.Session], *, complete: bool = False) -> list[Outbound]:
        """Fold reported sessions in. `complete` means the list is every active session."""
        out: list[Outbound] = []
        self.events = []
        seen: set[int] = set()
        for session in sessions:
            number = session.number
            if number is None:
                continue
            seen.add(number)
            if session.state == "cleared" or session.clearType is not None:
                self._end(number, session, out)
            else:
                self._update(number, session, out)
        if complete:
            for number in [n for n in self.active if n not in seen]:
                gone = self.active[number]
                self._end(number, msgspec.structs.replace(gone, state="cleared"), out)
        return out

    def vanished(self, sessions: Iterable[t7470.Session]) -> list[int]:
        """Numbers tracked as active that a complete list no longer holds."""
        present = {s.number for s in sessions}
        return [n for n in self.active if n not in present]

    def retained(self) -> list[Outbound]:
        """All retained state the tracker stands behind: active sessions and statistics.

        Republished after every reconnect, in case the broker lost its retained store.
        """
        out = [
            Outbound(self._topics.pager_session(number), ENCODER.encode(session), True)
            for number, session in self.active.items()
        ]
        if self._statistics is not None:
            out.append(Outbound(self._topics.statistics, self._statistics, True))
        return out

    def statistics(self, statistics: t7470.Statistics | None) -> list[Outbound]:
        """Retained `pager/statistics`, only when it changed."""
        if statistics is None:
            return []
        payload = ENCODER.encode(statistics)
        if payload == self._statistics:
            return []
        self._statistics = payload
        return [Outbound(self._topics.statistics, payload, True)]

    def _update(self, number: int, session: t7470.Session, out: list[Outbound]) -> None:
        previous = self.active.get(number)
        if previous == session:
            return
        if _older(session, previous):
            return
        names: list[EventName] = []
        if previous is None or previous.id != session.id:
            names.append("started")
            if session.state == "paged":
                names.append("paged")
        elif session.state == "paged" and (
            previous.state != "paged" or previous.notified != session.notified
        ):
            names.append("paged")
        elif any(getattr(previous, f) != getattr(session, f) for f in _FIELDS):
            names.append("updated")
        self.active[number] = session
        out.append(Outbound(self._topics.pager_session(number), ENCODER.encode(session), True))
        for name in names:
            self._event(name, number, session, out)

    def _end(self, number: int, session: t7470.Session, out: list[Outbound]) -> None:
        previous = self.active.get(number)
        if (
            previous is not None
            and session.id is not None
            and previous.id != session.id
            and _older(session, previous)
        ):
            return  # an old session's end, reported late; the active one stays
        if session.id is not None and session.id in self._ended:
            self.active.pop(number, None)
            return
        self.active.pop(number, None)
        if session.id is not None:
            self._ended[session.id] = None
            while len(self._ended) > _ENDED_MEMORY:
                self._ended.popitem(last=False)
        out.append(Outbound(self._topics.pager_session(number), b"", True))
        name: EventName = "removed" if session.clearType == "REMOVED" else "cleared"
        self._event(name, number, session, out)

    def _event(
        self, name: EventName, number: int, session: t7470.Session, out: list[Outbound]
    ) -> None:
        self.events.append(name)
        payload = ENCODER.encode(Event(event=name, number=number, session=session))
        out.append(Outbound(self._topics.pager_event(number), payload, False))


def _older(session: t7470.Session, previous: t7470.Session | None) -> bool:
    """True if `session` is a stale report (its sequence is behind what we already have)."""
    if previous is None or session.sessionSequence is None or previous.sessionSequence is None:
        return False
    return session.sessionSequence < previous.sessionSequence
