"""Session tracking: reports from any source become exactly one event per change."""

from __future__ import annotations

import json

from bridge import t7470
from bridge.sessions import Outbound, SessionTracker
from bridge.topics import Topics


def session(state: str, seq: int, **fields: object) -> t7470.Session:
    base: dict[str, object] = {"id": 48, "number": 66, "sessionSequence": seq, "label": "Sarah"}
    return t7470.Session(state=state, **(base | fields))  # type: ignore[arg-type]


def events(out: list[Outbound]) -> list[str]:
    return [json.loads(o[1])["event"] for o in out if o[0].endswith("/event")]


def test_lifecycle_publishes_events_and_retained_state() -> None:
    tracker = SessionTracker(Topics())
    out = tracker.apply([session("started", 1)])
    assert events(out) == ["started"]
    assert ("pager/66/session", True) in [(o.topic, o.retain) for o in out]
    assert events(tracker.apply([session("paged", 2, notified="t")])) == ["paged"]
    assert events(tracker.apply([session("paged", 3, notified="t", label="Bob")])) == ["updated"]
    out = tracker.apply([session("cleared", 4, clearType="STOP")])
    assert events(out) == ["cleared"]
    emptied = [o for o in out if o.topic == "pager/66/session"]
    assert emptied == [("pager/66/session", b"", True)]
    final = json.loads(next(o.payload for o in out if o.topic == "pager/66/event"))
    assert final == {
        "event": "cleared",
        "number": 66,
        "session": {
            "id": 48,
            "sessionSequence": 4,
            "number": 66,
            "label": "Sarah",
            "state": "cleared",
            "clearType": "STOP",
        },
    }


def test_same_change_reported_twice_is_one_event() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1)])
    assert events(tracker.apply([session("paged", 2, notified="t")])) == ["paged"]
    assert tracker.apply([session("paged", 2, notified="t")]) == []
    ended = session("cleared", 3, clearType="REMOVED")
    assert events(tracker.apply([ended])) == ["removed"]
    assert events(tracker.apply([ended])) == []


def test_stale_reports_are_ignored() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("paged", 5, notified="t")])
    assert tracker.apply([session("started", 4)]) == []


def test_created_already_paged_gives_both_events() -> None:
    tracker = SessionTracker(Topics())
    assert events(tracker.apply([session("paged", 1, notified="t")])) == ["started", "paged"]


def test_complete_list_ends_missing_sessions() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1), session("started", 2, id=49, number=7)])
    assert tracker.vanished([session("started", 1)]) == [7]
    out = tracker.apply([session("started", 1)], complete=True)
    assert events(out) == ["cleared"]
    assert ("pager/7/session", b"", True) in out


def test_statistics_only_when_changed() -> None:
    tracker = SessionTracker(Topics("x"))
    stats = t7470.Statistics(guestsServed=1, numSessions=2)
    assert [o.topic for o in tracker.statistics(stats)] == ["x/pager/statistics"]
    assert tracker.statistics(stats) == []


def test_retained_snapshot_for_republishing() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1)])
    tracker.statistics(t7470.Statistics(numSessions=1))
    assert [(o.topic, o.retain) for o in tracker.retained()] == [
        ("pager/66/session", True),
        ("pager/statistics", True),
    ]
