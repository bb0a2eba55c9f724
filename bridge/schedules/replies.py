"""Reading Sensaphone's replies tolerantly: check what the bridge computes with, pass the rest on.

The Sensaphone.net API documentation types its fields loosely (it calls the session id a string
in the login reply and an integer in requests, leaves `start`/`end` "..TBD..", marks every
timerange field and every parent in a reply optional), and our simulator was written from the
same reading of it as the bridge. So replies are decoded as plain JSON and only what the bridge
computes with is read, leniently: a number written as text is a number. What it computes with:

- the envelope's `result.success` and `result.code` (0 is success, 2 means "log in again");
- the login's `acctid` and `session` (sent back as received, the acctid as a number when it
  is one), `login_timestamp` and `session_expiration` (when to renew; without them the session
  is kept until Sensaphone answers code 2);
- the parent ids in a timerange reply (`device_id`, `user_id`, `contact_id`, `schedule_id`),
  matched against the request's to find our schedule;
- a range's `range_id` (the integer an MQTT client names the range by) and `interval` (decoded
  for the retained state).

Everything else in a range, known or not, is passed to MQTT exactly as Sensaphone sent it, and
so are `start`, `end` and `interval` when they are not of their documented type. A read whose
ranges cannot be told apart (our schedule missing from a reply that names others, a timerange
that is no array, a range that is no object or whose id is no integer) raises `Unusable`: nothing
was changed, and a wrong retained schedule would mislead. For a change Sensaphone confirmed, the
caller logs it instead: what a reply echoes never turns a change carried out into an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from bridge.contract.lenient import as_int, as_number

# Each documented timerange field that the bridge reads as a typed value.
_NUMBERS: Final = ("range_id", "interval")
_TEXTS: Final = ("start", "end")
Levels = tuple[tuple[str, str], ...]  # (array key, id field) of each parent, outermost first


class Unusable(ValueError):
    """A reply lacks, or garbles, what the bridge needs from it."""


class TimeRange(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One timerange: what a request sets, or what a reply said.

    `range_id` and `interval` are read as integers (numbers sent as text included), `start` and
    `end` as text, their format undocumented and passed through. `extra` holds every other field
    of a reply, and any of those four whose value is not of its type, exactly as Sensaphone sent
    it. `wire()` is the range as sent, with the id and interval as numbers.
    """

    range_id: int | None = None
    start: str | None = None
    end: str | None = None
    interval: int | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """The range as a JSON object: for a request's body, or to pass a reply on."""
        known = {
            name: value
            for name in ("range_id", "start", "end", "interval")
            if (value := getattr(self, name)) is not None
        }
        return {**known, **self.extra}


def read_range(raw: dict[str, Any]) -> TimeRange:
    """One range of a reply: the fields the bridge reads, and the rest as sent (`extra`)."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in raw.items():
        number = as_int(value) if name in _NUMBERS else None
        if number is not None:
            fields[name] = number
        elif name in _TEXTS and isinstance(value, str):
            fields[name] = value
        else:
            extra[name] = value
    return TimeRange(**fields, extra=extra)


def ranges_in(
    response: Any, levels: Levels, ids: tuple[int, ...], *, strict: bool
) -> list[TimeRange]:
    """The ranges under our schedule in a reply nested like the request (ids as numbers or
    text). A reply that names no parent and no timerange has none. `strict` (a read): a range
    that is no object or whose id is no integer raises Unusable; otherwise such ranges are left
    out or passed on with the id as sent. Raises Unusable when the reply names other parents but
    not ours, or its timerange is no array."""
    node = _schedule(response, levels, ids)
    items = node.get("timerange") if isinstance(node, dict) else None
    items = [items] if isinstance(items, dict) else [] if items is None else items
    if not isinstance(items, list):
        raise Unusable(f"its timerange is a {_kind(items)}, not an array")
    ranges = []
    for item in items:
        if not isinstance(item, dict):
            if strict:
                raise Unusable(f"a timerange is a {_kind(item)}, not an object")
            continue
        rng = read_range(item)
        if strict and rng.extra.get("range_id") is not None:
            raise Unusable(f"range_id {rng.extra['range_id']!r} is not an integer")
        ranges.append(rng)
    return ranges


def _schedule(response: Any, levels: Levels, ids: tuple[int, ...]) -> Any:
    """The node of our schedule: down each parent the reply names, matching ids."""
    node = response
    for (key, id_field), ident in zip(levels, ids, strict=True):
        if not isinstance(node, dict) or key not in node:
            continue  # parents are optional in a reply: this one was left out
        entries = node[key]
        entries = [entries] if isinstance(entries, dict) else entries
        if not isinstance(entries, list):
            raise Unusable(f"its {key} is a {_kind(entries)}, not an array")
        matches = [e for e in entries if isinstance(e, dict) and as_int(e.get(id_field)) == ident]
        if not matches and len(entries) == 1 and isinstance(entries[0], dict):
            matches = [e for e in entries if id_field not in e]  # a lone parent without its id
        if not matches:
            raise Unusable(f"it names no {key} with {id_field} {ident}")
        node = matches[0]
    return node


@dataclass(frozen=True)
class Login:
    acctid: int | str  # sent back as received; a number when it is one (requests say Integer)
    session: str | int  # sent back exactly as received: the docs call it both
    login_timestamp: float | None
    session_expiration: float | None


def read_login(response: Any) -> Login:
    """A login reply's session; raises Unusable without an acctid and a session."""
    if not isinstance(response, dict):
        raise Unusable(f"the response is a {_kind(response)}, not an object")
    acctid, session = response.get("acctid"), response.get("session")
    if isinstance(acctid, str) and (number := as_int(acctid)) is not None:
        acctid = number
    if isinstance(acctid, bool) or not isinstance(acctid, int | str) or acctid == "":
        raise Unusable(f"acctid is {_shown(acctid)}")
    if isinstance(session, bool) or not isinstance(session, str | int) or session == "":
        raise Unusable(f"session is {_shown(session)}")
    return Login(
        acctid,
        session,
        as_number(response.get("login_timestamp")),
        as_number(response.get("session_expiration")),
    )


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _shown(value: Any) -> str:
    return "missing" if value is None else f"a {_kind(value)} ({value!r:.40})"
