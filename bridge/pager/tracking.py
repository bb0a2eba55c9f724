"""Session tracking: turns what the transmitter reports into events and retained state. Pure.

Every source of session data goes through `SessionTracker.apply`: replies to the bridge's own
commands, Observe notifications (changes made by anyone, the restaurant's console too), polls of
the full list, and history items (which carry how a session ended). Because the tracker compares
against what it last saw, a change reported twice (in our reply and again in a notification)
yields one event, not two.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import msgspec

from bridge.contract.models import ENCODER
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound
from bridge.pager.t7470_read import COMPARED, Session

EventName = Literal["started", "paged", "cleared", "removed", "updated"]
_DECODE = msgspec.json.Decoder().decode
_ENDED_MEMORY = 4096


class Changes(NamedTuple):
    """What one report changed: the messages to publish, in order, and the events among them."""

    out: list[Outbound]
    events: list[EventName]


class SessionTracker:
    """What the bridge believes is active on one transmitter, and what it has published.

    Sessions are the device's own JSON (`Session.raw`), published as they came; the tracker
    reads only the few fields `bridge.pager.t7470_read` names. A session whose number is not one
    this site serves never becomes a topic (`refused` counts them): the device's values are data.
    """

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self.active: dict[int, Session] = {}
        # Ids of sessions whose end was already published (bounded: oldest forgotten first).
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._statistics: dict[str, Any] | None = None
        self._published_statistics: bytes | None = None
        self._published_from: tuple[dict[str, Any] | None, int] = (None, 0)
        self.refused = 0  # sessions skipped for a number outside the site's range

    def apply(self, sessions: Iterable[Session], *, complete: bool = False) -> Changes:
        """Fold reported sessions in: what to publish and the events among it. `complete`
        means the list is every active session."""
        changes = Changes([], [])
        seen: set[int] = set()
        for session in sessions:
            number = session.number
            if number is None or not self._topics.is_pager_number(number):
                self.refused += 1
                continue
            seen.add(number)
            if session.ended:
                self._end(number, session, changes)
            else:
                self._update(number, session, changes)
        if complete:
            for number in [n for n in self.active if n not in seen]:
                self._end(number, self.active[number].ended_as(), changes)
        return changes

    def learn(self, topic: str, payload: bytes) -> None:
        """Take a retained session another replica published as what is active, silently (no
        event, nothing published): a standby's knowledge for when it takes over."""
        number = self._topics.session_number(topic)
        if number is None:
            return
        if not payload:
            self.active.pop(number, None)
            return
        try:
            raw = _DECODE(payload)
        except (msgspec.DecodeError, RecursionError):
            return
        if isinstance(raw, dict):
            self.active[number] = Session(raw)

    def vanished(self, sessions: Iterable[Session]) -> list[int]:
        """Numbers tracked as active that a complete list no longer holds."""
        present = {s.number for s in sessions}
        return [n for n in self.active if n not in present]

    def retained(self) -> list[Outbound]:
        """All retained state the tracker stands behind: active sessions and statistics.

        Republished after every reconnect, in case the broker lost its retained store.
        """
        out = [
            Outbound(self._topics.pager_session(number), ENCODER.encode(session.raw), True)
            for number, session in self.active.items()
        ]
        if self._published_statistics is not None:
            out.append(Outbound(self._topics.statistics, self._published_statistics, True))
        return out

    def statistics(self, statistics: dict[str, Any] | None) -> list[Outbound]:
        """Retained `pager/statistics`, only when it changed: the device's statistics as it
        sent them (the latest it sent, when this reply had none), plus `activeSessions`, the
        number of active sessions the bridge tracks (the device's `numSessions` counts every
        session ever started)."""
        if statistics is not None:
            self._statistics = statistics
        current = (self._statistics, len(self.active))
        # Nearly every reply carries statistics, mostly unchanged: compared before encoded.
        if self._statistics is None or current == self._published_from:
            return []
        self._published_from = current
        payload = ENCODER.encode({**self._statistics, "activeSessions": len(self.active)})
        self._published_statistics = payload
        return [Outbound(self._topics.statistics, payload, True)]

    def _update(self, number: int, session: Session, changes: Changes) -> None:
        previous = self.active.get(number)
        if previous is not None and previous.raw == session.raw:
            return
        if _older(session, previous):
            return
        names: list[EventName] = []
        if previous is None or previous.id != session.id:
            names.append("started")
            if session.state == "paged":
                names.append("paged")
        elif session.state == "paged" and (
            previous.state != "paged" or previous.raw.get("notified") != session.raw.get("notified")
        ):
            names.append("paged")
        elif any(previous.raw.get(f) != session.raw.get(f) for f in COMPARED):
            names.append("updated")
        self.active[number] = session
        payload = ENCODER.encode(session.raw)
        changes.out.append(Outbound(self._topics.pager_session(number), payload, True))
        for name in names:
            self._event(name, number, session, changes)

    def _end(self, number: int, session: Session, changes: Changes) -> None:
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
        changes.out.append(Outbound(self._topics.pager_session(number), b"", True))
        name: EventName = "removed" if session.clear_type == "REMOVED" else "cleared"
        self._event(name, number, session, changes)

    def _event(self, name: EventName, number: int, session: Session, changes: Changes) -> None:
        changes.events.append(name)
        # The shape of models.Event, with the session as the device sent it.
        payload = ENCODER.encode({"event": name, "number": number, "session": session.raw})
        changes.out.append(Outbound(self._topics.pager_event(number), payload, False))


def _older(session: Session, previous: Session | None) -> bool:
    """True if `session` is a stale report (its sequence is behind what we already have)."""
    if previous is None or session.sequence is None or previous.sequence is None:
        return False
    return session.sequence < previous.sequence
