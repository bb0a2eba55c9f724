"""The T7470's state machine, without any I/O: sessions, history, statistics and settings.

`bridge.sim.pager.server` puts it behind CoAP. Kept apart so the rules (LRS's T7470 CoAP API, v1.2)
read in one place:

- A session is created `started`, becomes `paged` (action page), and ends `cleared`: with
  clearType STOP by action clear or DELETE /v1/sessions (clear all), REMOVED by action remove or
  DELETE /v1/sessions?number=N. Ended sessions leave the active list for the (bounded) history.
- One active session per number. `globalSessionSequence` grows by one per session change; each
  session carries the sequence of its own last change.
- Statistics since the last clear: numSessions created, guestsServed paged, percentLate /
  percentOnTime of the paged ones by their goal, averageTimeServed seconds from start to page.
- The device clock is the host clock plus an offset that POST /v1/settings `datetime` moves.

Every refusal is a `DeviceError` carrying the CoAP code and the message of the `{"error": ...}`
body (undocumented on the real device; these are the simulator's choices).
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import secrets
import time
import uuid
from dataclasses import dataclass, field

import msgspec

from bridge.contract import t7470

DEVICE_NAME = "T7470 Simulator"
FIRMWARE_VERSION = "1.2.0-sim"
DEFAULT_PAGE_MODE = "Flash30Sec"
SESSION_ACTIONS = ("page", "clear", "remove")


class DeviceError(Exception):
    """A refused request: `code` is the dotted CoAP code, `message` goes into the body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def timestamp(moment: dt.datetime) -> str:
    """ISO 8601 local time without zone or fraction, as the device writes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class _Active:
    session: t7470.Session
    started: dt.datetime


@dataclass
class _Stats:
    created: int = 0
    served: int = 0
    late: int = 0
    waited: float = 0.0  # seconds from start to page, summed over served sessions

    def as_wire(self) -> t7470.Statistics:
        late = _number(100 * self.late / self.served) if self.served else 0
        return t7470.Statistics(
            guestsServed=self.served,
            percentLate=late,
            percentOnTime=_number(100 - late) if self.served else 0,
            averageTimeServed=round(self.waited / self.served) if self.served else 0,
            numSessions=self.created,
        )


@dataclass
class PagerDevice:
    """Everything a T7470 remembers. Methods return the sessions they changed (copies)."""

    max_number: int = 999
    history_limit: int = 1000
    settings: t7470.DeviceSettings = field(
        default_factory=lambda: t7470.DeviceSettings(
            systemId=1, defaultTargetGoal=300, statisticsClearMark=4
        )
    )
    sequence: int = 0
    # Bumped on every change of what GET /v1/sessions returns; the ETag is derived from it.
    version: int = 0
    active: dict[int, _Active] = field(default_factory=dict)
    history: collections.deque[t7470.Session] = field(default_factory=collections.deque)
    pages: collections.deque[t7470.StandalonePage] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    _stats: _Stats = field(default_factory=_Stats)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _offset: dt.timedelta = field(default_factory=dt.timedelta)
    _boot: bytes = field(default_factory=lambda: secrets.token_bytes(4))
    # The envelope's timestamp of the current device second (strftime per reply is dear).
    _stamp: tuple[int, str] = (-1, "")

    # -- clock and envelopes ---------------------------------------------------------------

    def now(self) -> dt.datetime:
        return dt.datetime.now() + self._offset  # noqa: DTZ005 - the device keeps local time

    def envelope(self, types: list[str], **parts: object) -> t7470.Envelope:
        """A reply or notification envelope with the device's common fields filled in."""
        return t7470.Envelope(
            responseTypes=types,
            globalSessionSequence=self.sequence,
            timestamp=self._timestamp(),
            deviceName=DEVICE_NAME,
            firmwareVersion=FIRMWARE_VERSION,
            **parts,  # type: ignore[arg-type]
        )

    def _timestamp(self) -> str:
        second = int(time.time() + self._offset.total_seconds())
        if second != self._stamp[0]:
            moment = dt.datetime.fromtimestamp(second)  # noqa: DTZ006 - local time, as now()
            self._stamp = (second, timestamp(moment))
        return self._stamp[1]

    @property
    def etag(self) -> bytes:
        # A per-boot salt, so a client's ETag from before a restart never matches by accident.
        return self._boot + (self.version & 0xFFFFFFFF).to_bytes(4, "big")

    def statistics(self) -> t7470.Statistics:
        return self._stats.as_wire()

    # -- sessions --------------------------------------------------------------------------

    def check_number(self, number: int) -> int:
        if not 1 <= number <= self.max_number:
            raise DeviceError("4.00", f"number {number} is outside 1..{self.max_number}")
        return number

    def sessions(self, number: int | None = None) -> list[t7470.Session]:
        if number is None:
            return [_copy(a.session) for a in self.active.values()]
        return [_copy(self._find(number).session)]

    def create(self, body: t7470.CreateSession) -> list[t7470.Session]:
        number = self.check_number(body.number)
        if number in self.active:
            raise DeviceError("4.00", f"number {number} already has an active session")
        if body.action not in (None, "page"):
            raise DeviceError("4.00", f"unknown action {body.action!r} (expected page)")
        _check_fields(body.goal, body.partySize)
        now = self.now()
        stamp = timestamp(now)
        goal = body.goal if body.goal is not None else self.settings.defaultTargetGoal
        session = t7470.Session(
            id=next(self._ids),
            uuid=str(uuid.uuid4()),
            number=number,
            partySize=body.partySize if body.partySize is not None else 1,
            goalInSeconds=goal if goal is not None else 300,
            created=stamp,
            started=stamp,
            label=body.label,
            state="started",
        )
        self.active[number] = _Active(session, now)
        self._stats.created += 1
        self._changed(session)
        if body.action == "page":
            self._page(self.active[number], None)
        return [_copy(session)]

    def update(self, number: int, body: t7470.UpdateSession) -> list[t7470.Session]:
        active = self._find(number)
        if body.action not in (None, *SESSION_ACTIONS):
            raise DeviceError(
                "4.00", f"unknown action {body.action!r} (expected page, clear or remove)"
            )
        _check_fields(body.goal, body.partySize)
        session = active.session
        fields = {"goalInSeconds": body.goal, "label": body.label, "partySize": body.partySize}
        changes = {k: v for k, v in fields.items() if v is not None}
        if changes:
            for name, value in changes.items():
                setattr(session, name, value)
            self._changed(session)
        match body.action:
            case "page":
                self._page(active, body.pageMode)
            case "clear":
                return [self._end(number, "STOP")]
            case "remove":
                return [self._end(number, "REMOVED")]
        return [_copy(session)]

    def page_session(self, number: int, page_mode: str | None = None) -> list[t7470.Session]:
        active = self._find(number)
        self._page(active, page_mode)
        return [_copy(active.session)]

    def delete(self, number: int) -> list[t7470.Session]:
        self._find(number)
        return [self._end(number, "REMOVED")]

    def clear(self, number: int) -> list[t7470.Session]:
        self._find(number)
        return [self._end(number, "STOP")]

    def clear_all(self) -> list[t7470.Session]:
        return [self._end(number, "STOP") for number in list(self.active)]

    def standalone_page(self, body: t7470.StandalonePage) -> None:
        self.check_number(body.number)
        if body.pageMode is None:
            body.pageMode = DEFAULT_PAGE_MODE
        self.pages.append(body)

    # -- history, statistics, settings -----------------------------------------------------

    def clear_history(self) -> None:
        self.history.clear()

    def clear_statistics(self) -> t7470.Statistics:
        self._stats = _Stats()
        self.version += 1
        return self.statistics()

    def current_settings(self) -> t7470.DeviceSettings:
        return msgspec.structs.replace(self.settings, datetime=timestamp(self.now()))

    def update_settings(self, body: t7470.DeviceSettings) -> t7470.DeviceSettings:
        if body.defaultTargetGoal is not None and body.defaultTargetGoal < 0:
            raise DeviceError("4.00", "defaultTargetGoal must not be negative")
        mark = body.statisticsClearMark
        if mark is not None and not 0 <= mark <= 24:
            raise DeviceError("4.00", "statisticsClearMark is an hour of the day, 0 to 24")
        if body.datetime is not None:
            try:
                wanted = dt.datetime.fromisoformat(body.datetime)
            except ValueError:
                raise DeviceError("4.00", f"datetime {body.datetime!r} is not ISO 8601") from None
            self._offset = wanted.replace(tzinfo=None) - dt.datetime.now()  # noqa: DTZ005
        for name in ("systemId", "defaultTargetGoal", "statisticsClearMark"):
            value = getattr(body, name)
            if value is not None:
                setattr(self.settings, name, value)
        return self.current_settings()

    # -- internals -------------------------------------------------------------------------

    def _find(self, number: int) -> _Active:
        self.check_number(number)
        active = self.active.get(number)
        if active is None:
            raise DeviceError("4.04", f"no active session for number {number}")
        return active

    def _changed(self, session: t7470.Session) -> None:
        self.sequence += 1
        self.version += 1
        session.sessionSequence = self.sequence

    def _page(self, active: _Active, page_mode: str | None) -> None:
        session = active.session
        if session.state == "started":
            now = self.now()
            session.notified = timestamp(now)
            session.state = "paged"
            waited = (now - active.started).total_seconds()
            self._stats.served += 1
            self._stats.waited += waited
            if waited > (session.goalInSeconds or 0):
                self._stats.late += 1
        # Paging an already paged session pages the guest again: a change, but not a statistic.
        if page_mode is not None:
            session.pageMode = page_mode
        self._changed(session)

    def _end(self, number: int, clear_type: str) -> t7470.Session:
        session = self.active.pop(number).session
        session.state = "cleared"
        session.cleared = timestamp(self.now())
        session.clearType = clear_type
        self._changed(session)
        if len(self.history) >= self.history_limit:
            self.history.popleft()
        self.history.append(session)
        return _copy(session)


def _check_fields(goal: int | None, party_size: int | None) -> None:
    if goal is not None and goal < 0:
        raise DeviceError("4.00", "goal must not be negative")
    if party_size is not None and party_size < 1:
        raise DeviceError("4.00", "partySize must be at least 1")


def _copy(session: t7470.Session) -> t7470.Session:
    return msgspec.structs.replace(session)


def _number(value: float) -> float | int:
    """Whole percentages as integers (the device's examples show 0 and 100), others to 0.1."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded
