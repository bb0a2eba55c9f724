"""The Sensaphone simulator's state and API semantics: accounts, sessions, schedules, ranges.

No HTTP here (that is `bridge.sim.sensaphone.server`): requests arrive as decoded JSON bodies or
URI path
segments and leave as the `response` part of the envelope, or raise SimError with the code and
message the envelope's `result` carries. Thread-safe: the HTTP server calls in from many threads.

Codes: 1 invalid request, 2 session expired (also for an unknown session), 3 invalid value,
4 not found, 7 invalid user name or password (9, too many requests, comes from fault injection).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from typing import Any, Final, Literal

Kind = Literal["default_schedule", "device_schedule", "contact_schedule"]
ScheduleKey = tuple[Kind, tuple[int, ...]]  # kind, parent ids + schedule id (outermost first)
# Each kind's parents in the resource tree: (array key, id field), outermost first.
LEVELS: Final[dict[Kind, tuple[tuple[str, str], ...]]] = {
    "default_schedule": (("device", "device_id"), ("default_schedule", "schedule_id")),
    "device_schedule": (("device", "device_id"), ("device_schedule", "schedule_id")),
    "contact_schedule": (
        ("user", "user_id"),
        ("contact", "contact_id"),
        ("schedule", "schedule_id"),
    ),
}
KIND_OF_KEYS: Final = {tuple(k for k, _ in levels): kind for kind, levels in LEVELS.items()}
VERBS: Final = ("create", "read", "update", "delete")
_FIELDS: Final = ("range_id", "start", "end", "interval")
# "Create a new time range with default values": the docs leave start/end "..TBD..".
DEFAULT_RANGE: Final = {"start": "00:00", "end": "23:59", "interval": 127}


class SimError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def default_schedules() -> dict[ScheduleKey, list[dict[str, Any]]]:
    """The schedule of the Sensaphone.net API documentation's read example (ids 1234, 28487,
    ranges 58381 and 51587; its times are "..TBD.."), plus a device and a contact schedule."""
    return {
        ("default_schedule", (1234, 28487)): [
            {"range_id": 58381, "start": "08:00", "end": "17:00", "interval": 127},
            {"range_id": 51587, "start": "17:00", "end": "22:00", "interval": 7},
        ],
        ("device_schedule", (1234, 500)): [],
        ("contact_schedule", (55, 66, 300)): [
            {"range_id": 70001, "start": "09:00", "end": "18:00", "interval": 62},
        ],
    }


class SensaphoneStore:
    def __init__(
        self,
        accounts: dict[str, tuple[str, int]] | None = None,
        schedules: dict[ScheduleKey, list[dict[str, Any]]] | None = None,
        session_lifetime: float = 3600,
    ) -> None:
        self.accounts = accounts or {"demo": ("demo-password", 987654)}  # user -> password, acctid
        self.session_lifetime = session_lifetime
        seeded = default_schedules() if schedules is None else schedules
        self._schedules = {k: {r["range_id"]: dict(r) for r in v} for k, v in seeded.items()}
        self._next_range = itertools.count(90001)
        self._sessions: dict[str, tuple[int, float]] = {}  # token -> acctid, expires (epoch)
        self._lock = threading.Lock()
        self.logins = 0  # login requests, accepted or not
        self.failed_logins = 0
        self.ranges_created = 0

    def expire_sessions(self) -> None:
        with self._lock:
            self._sessions = {t: (a, 0.0) for t, (a, _) in self._sessions.items()}

    def add_schedule(self, kind: Kind, ids: tuple[int, ...], ranges: list[dict[str, Any]]) -> None:
        with self._lock:
            self._schedules[(kind, ids)] = {r["range_id"]: dict(r) for r in ranges}

    def ranges(self, kind: Kind, ids: tuple[int, ...]) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._schedules[(kind, ids)].values()]

    def login(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.logins += 1
            if body.get("request_type") != "create" or body.get("resource") != "login":
                raise SimError(1, "Invalid request: expected request_type create, resource login")
            account = self.accounts.get(str(body.get("user_name")))
            if account is None or not secrets.compare_digest(
                account[0].encode(), str(body.get("password")).encode()
            ):
                self.failed_logins += 1
                raise SimError(7, "Invalid user name or password")
            token, stamp = secrets.token_hex(16), int(time.time())
            self._sessions[token] = (account[1], stamp + self.session_lifetime)
        return {
            "acctid": account[1],
            "session": token,
            "login_timestamp": stamp,
            "session_expiration": self.session_lifetime,
        }

    def json_request(self, kind: Kind, body: dict[str, Any]) -> Any:
        """A JSON-mode request (already known to be a POST to `kind`'s timerange URI)."""
        verb = body.get("request_type")
        if verb not in VERBS:
            raise SimError(1, "Invalid request: request_type must be create|read|update|delete")
        # The API documentation's JSON example says "uuid" where its property table says
        # "session": both are accepted.
        self._check_session(body.get("acctid"), body.get("session", body.get("uuid")))
        return _walk_json(self, kind, str(verb), body)

    def uri_request(self, verb: str, parts: list[str], body: dict[str, Any]) -> Any:
        """A URI-mode request: `parts` is the path after the base, `{acctid}/{session}/...`."""
        if len(parts) < 2:
            raise SimError(1, "Invalid request: unknown resource path")
        self._check_session(parts[0], parts[1])
        kind, ids, rest = _parse_uri(parts[2:])
        items = body.get("timerange")
        if rest:  # /{range_id}[/{field}/{value}...]: the documented single-field edit
            item: dict[str, Any] = {"range_id": parse_int(rest[0])}
            for name, value in zip(rest[1::2], rest[2::2], strict=False):
                item[name] = parse_int(value) if name == "interval" else value
            base = items[0] if isinstance(items, list) and items else {}
            items = [{**base, **item}] if isinstance(base, dict) else items
        tree: Any = {"timerange": self.apply(verb, (kind, ids), items)}
        for (key, id_field), ident in reversed(list(zip(LEVELS[kind], ids, strict=True))):
            tree = {key: [{id_field: ident, **tree}]}
        return tree

    def _check_session(self, acctid: Any, token: Any) -> None:
        with self._lock:
            acct, expires = self._sessions.get(str(token), (None, 0.0))
        if acct is None or str(acct) != str(acctid) or time.time() >= expires:
            raise SimError(2, "Session expired")

    def apply(self, verb: str, key: ScheduleKey, items: Any) -> list[dict[str, Any]]:
        """Carry out one verb on one schedule; `items` is the request's timerange array."""
        if items is not None and not (
            isinstance(items, list) and all(isinstance(i, dict) for i in items)
        ):
            raise SimError(3, "Invalid value: timerange must be an array of objects")
        for item in items or []:
            _check_range(item)
        with self._lock:
            schedule = self._schedules.get(key)
            if schedule is None:
                raise SimError(4, f"Not found: schedule {key[1][-1]}")
            if verb == "read":
                return [dict(r) for r in schedule.values()]
            if verb == "create":
                return [self._create(schedule, item) for item in (items or [{}])]
            if not items:
                raise SimError(3, f"Invalid value: {verb} needs a timerange with range_id")
            return [_edit(verb, schedule, item) for item in items]

    def _create(self, schedule: dict[int, dict[str, Any]], item: dict[str, Any]) -> dict[str, Any]:
        new = {**DEFAULT_RANGE, **{k: v for k, v in item.items() if k != "range_id"}}
        new["range_id"] = next(self._next_range)
        schedule[new["range_id"]] = new
        self.ranges_created += 1
        return dict(new)


def _edit(verb: str, schedule: dict[int, dict[str, Any]], item: dict[str, Any]) -> Any:
    range_id = item.get("range_id")
    if not isinstance(range_id, int):
        raise SimError(3, f"Invalid value: {verb} requires range_id")
    if range_id not in schedule:
        raise SimError(4, f"Not found: range {range_id}")
    if verb == "delete":
        del schedule[range_id]
        return {"range_id": range_id}
    if len(item) < 2:
        raise SimError(3, "Invalid value: update requires a field besides range_id")
    schedule[range_id].update(item)
    return dict(schedule[range_id])


def _check_range(item: dict[str, Any]) -> None:
    for name, value in item.items():
        if name not in _FIELDS:
            raise SimError(3, f"Invalid value: unknown timerange property {name!r}")
        if name in ("start", "end") and not isinstance(value, str):
            raise SimError(3, f"Invalid value: {name} must be a string")
        if name in ("range_id", "interval") and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31
        ):
            raise SimError(3, f"Invalid value: {name} must be a non-negative integer")


def _walk_json(store: SensaphoneStore, kind: Kind, verb: str, body: dict[str, Any]) -> Any:
    """Apply `verb` to every schedule named in the nested request; mirror it in the reply."""
    levels = LEVELS[kind]

    def walk(node: Any, depth: int, ids: tuple[int, ...]) -> list[dict[str, Any]]:
        key, id_field = levels[depth]
        entries = node.get(key) if isinstance(node, dict) else None
        if not isinstance(entries, list) or not entries:
            raise SimError(1, f"Invalid request: {key} must be a non-empty array")
        out = []
        for entry in entries:
            ident = entry.get(id_field) if isinstance(entry, dict) else None
            if isinstance(ident, bool) or not isinstance(ident, int):
                raise SimError(1, f"Invalid request: {key}.{id_field} must be an integer")
            if depth + 1 < len(levels):
                child = walk(entry, depth + 1, (*ids, ident))
                out.append({id_field: ident, levels[depth + 1][0]: child})
            else:
                ranges = store.apply(verb, (kind, (*ids, ident)), entry.get("timerange"))
                out.append({id_field: ident, "timerange": ranges})
        return out

    return {levels[0][0]: walk(body, 0, ())}


def _parse_uri(parts: list[str]) -> tuple[Kind, tuple[int, ...], list[str]]:
    """`device/1/default_schedule/2/timerange/rest...` -> kind, ids, rest after `timerange`."""
    names, ids = [], []
    while len(parts) >= 2 and parts[0] != "timerange":
        names.append(parts[0])
        ids.append(parse_int(parts[1]))
        parts = parts[2:]
    kind = KIND_OF_KEYS.get(tuple(names))
    if kind is None or not parts or parts[0] != "timerange":
        raise SimError(1, "Invalid request: unknown resource path")
    return kind, tuple(ids), parts[1:]


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SimError(1, f"Invalid request: {text!r} is not an id") from None
