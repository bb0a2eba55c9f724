"""Reading the T7470's replies tolerantly: check what the bridge computes with, pass the rest on.

The vendor documents every envelope field as optional, firmware changes, and our simulator was
written from the same reading of the docs as the bridge, so it shares the bridge's misreadings
(`statisticsClearMark` was read as a timestamp; the device sends the hour at which statistics
clear, a number). So a reply is decoded as plain JSON, and only the few fields the bridge
computes with are read, leniently: a number sent as text is a number, a value of another type
is as good as absent. Everything else, known or not, is passed to MQTT exactly as the device
sent it. A new or retyped field can therefore never turn a command the device carried out into
an error. What the bridge computes with:

- a session's `number` (it becomes a topic segment: checked against the site's range by the
  caller), `id` (which session it is), `sessionSequence` (which report is newer), `state` and
  `clearType` (what happened), and, to tell what changed, `notified`, `label`,
  `goalInSeconds` and `partySize`, compared as they are;
- the envelope's `responseTypes` (a ping or not), and the numbers among the statistics (the
  gauges).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from bridge.contract.lenient import as_int

_DECODER: Final = msgspec.json.Decoder()
# A session's fields the tracker compares to tell an update from no change.
COMPARED: Final = ("label", "goalInSeconds", "partySize")


class Unreadable(ValueError):
    """The reply is not a JSON object at all (nor empty)."""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Session:
    """One session as the device reported it (`raw`), with what the bridge reads from it."""

    __slots__ = ("clear_type", "id", "number", "raw", "sequence", "state")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.number = as_int(raw.get("number"))
        identity = raw.get("id")
        # Compared only: "7" and 7 are the same session, a list or an object is no id at all.
        self.id: str | None = None if isinstance(identity, dict | list) else _key(identity)
        self.sequence = as_int(raw.get("sessionSequence"))
        self.state = _text(raw.get("state"))
        self.clear_type = _text(raw.get("clearType"))

    @property
    def ended(self) -> bool:
        return self.state == "cleared" or self.clear_type is not None

    def ended_as(self) -> Session:
        """This session as it reads once it left the active list unreported (cleared)."""
        return Session({**self.raw, "state": "cleared"})


def _key(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    number = as_int(value)
    return str(number) if number is not None else str(value)


class Reply:
    """A device reply or notification: the whole envelope and the parts the bridge reads."""

    __slots__ = ("raw", "settings", "statistics", "types")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        types = raw.get("responseTypes")
        self.types = [t for t in types if isinstance(t, str)] if isinstance(types, list) else []
        statistics = raw.get("statistics")
        self.statistics: dict[str, Any] | None = (
            statistics if isinstance(statistics, dict) else None
        )
        settings = raw.get("settings")
        self.settings: dict[str, Any] | None = settings if isinstance(settings, dict) else None

    @property
    def is_ping(self) -> bool:
        return "ping" in self.types

    @property
    def sessions(self) -> list[Session] | None:
        """The reported sessions (None when the reply has no session list)."""
        return _sessions(self.raw.get("sessions"))

    @property
    def history(self) -> list[Session] | None:
        return _sessions(self.raw.get("session_history"))


def _sessions(value: Any) -> list[Session] | None:
    if not isinstance(value, list):
        return None
    return [Session(item) for item in value if isinstance(item, dict)]


def read(payload: bytes) -> Reply:
    """The reply in `payload`; an empty payload is an empty envelope.

    Raises Unreadable for anything that is not a JSON object, or that nests deeper than the
    decoder will go (a hostile payload must not take the process down).
    """
    if not payload.strip():
        return Reply({})
    try:
        raw = _DECODER.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Unreadable(f"not JSON: {exc}") from None
    except RecursionError:
        raise Unreadable("JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise Unreadable(f"a JSON {type(raw).__name__}, not an object")
    return Reply(raw)
