"""Session tracking: reports from any source become exactly one event per change."""

from __future__ import annotations

import json
from typing import Any

from bridge.contract.topics import Topics
from bridge.pager.t7470_read import Session
from bridge.pager.tracking import Changes, SessionTracker


def session(state: str, seq: int, **fields: Any) -> Session:
    base: dict[str, Any] = {"id": 48, "sessionSequence": seq, "number": 66, "label": "Sarah"}
    return Session({**base, "state": state, **fields})


def events(changes: Changes) -> list[str]:
    """The events a report produced, as published; the tracker returns the same names."""
    names = [json.loads(o[1])["event"] for o in changes.out if o[0].endswith("/event")]
    assert changes.events == names
    return names


def test_lifecycle_publishes_events_and_retained_state() -> None:
    tracker = SessionTracker(Topics())
    changes = tracker.apply([session("started", 1)])
    out = changes.out
    assert events(changes) == ["started"]
    assert ("pager/66/session", True) in [(o.topic, o.retain) for o in out]
    assert events(tracker.apply([session("paged", 2, notified="t")])) == ["paged"]
    assert events(tracker.apply([session("paged", 3, notified="t", label="Bob")])) == ["updated"]
    changes = tracker.apply([session("cleared", 4, clearType="STOP")])
    out = changes.out
    assert events(changes) == ["cleared"]
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


def test_sessions_are_published_as_the_device_sent_them() -> None:
    """Unknown fields and retyped ones pass through unchanged; numbers written as text are
    read as numbers where the bridge computes with them."""
    tracker = SessionTracker(Topics())
    raw = {
        "id": "48",
        "number": "66",
        "sessionSequence": "3",
        "state": "started",
        "partySize": "4",
        "vipLevel": {"tier": 2},
    }
    changes = tracker.apply([Session(raw)])
    out = changes.out
    assert events(changes) == ["started"]
    retained = next(o for o in out if o.topic == "pager/66/session")
    assert json.loads(retained.payload) == raw
    # Same session, id now a number, an older sequence: stale, not a new session.
    assert tracker.apply([Session({**raw, "id": 48, "sessionSequence": 2})]).out == []


def test_numbers_the_site_does_not_serve_never_become_topics() -> None:
    tracker = SessionTracker(Topics(max_number=999))
    odd = [
        session("started", 1, number=0),
        session("started", 1, number=-7),
        session("started", 1, number=18446744073709551615),
        session("started", 1, number="abc"),
        session("started", 1, number=True),
        session("started", 1, number=1200),
    ]
    assert tracker.apply(odd).out == []
    assert tracker.refused == 6


def test_same_change_reported_twice_is_one_event() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1)])
    assert events(tracker.apply([session("paged", 2, notified="t")])) == ["paged"]
    assert tracker.apply([session("paged", 2, notified="t")]).out == []
    ended = session("cleared", 3, clearType="REMOVED")
    assert events(tracker.apply([ended])) == ["removed"]
    assert events(tracker.apply([ended])) == []


def test_stale_reports_are_ignored() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("paged", 5, notified="t")])
    assert tracker.apply([session("started", 4)]).out == []


def test_created_already_paged_gives_both_events() -> None:
    tracker = SessionTracker(Topics())
    assert events(tracker.apply([session("paged", 1, notified="t")])) == ["started", "paged"]


def test_complete_list_ends_missing_sessions() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1), session("started", 2, id=49, number=7)])
    assert tracker.vanished([session("started", 1)]) == [7]
    changes = tracker.apply([session("started", 1)], complete=True)
    out = changes.out
    assert events(changes) == ["cleared"]
    assert ("pager/7/session", b"", True) in out


def test_statistics_only_when_changed() -> None:
    tracker = SessionTracker(Topics("x"))
    stats = {"guestsServed": 1, "numSessions": 2, "firmwareCounter": "7"}
    (published,) = tracker.statistics(stats)
    assert published.topic == "x/pager/statistics"
    assert json.loads(published.payload) == {**stats, "activeSessions": 0}
    assert tracker.statistics(stats) == []
    assert tracker.statistics(None) == []  # a reply without statistics changes nothing


def test_active_sessions_count_the_active_list_not_every_session_ever() -> None:
    tracker = SessionTracker(Topics())
    tracker.statistics({"numSessions": 5})
    tracker.apply([session("started", 1)])
    (after_start,) = tracker.statistics(None)  # the count moved: published again
    assert json.loads(after_start.payload)["activeSessions"] == 1
    tracker.apply([session("cleared", 2, clearType="STOP")])
    (after_clear,) = tracker.statistics({"numSessions": 5})
    assert json.loads(after_clear.payload) == {"numSessions": 5, "activeSessions": 0}


def test_retained_snapshot_for_republishing() -> None:
    tracker = SessionTracker(Topics())
    tracker.apply([session("started", 1)])
    tracker.statistics({"numSessions": 1})
    assert [(o.topic, o.retain) for o in tracker.retained()] == [
        ("pager/66/session", True),
        ("pager/statistics", True),
    ]
