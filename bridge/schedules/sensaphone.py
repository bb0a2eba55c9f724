"""The Sensaphone.net REST client: the only module that builds Sensaphone HTTP requests.

Session: logs in on first use (`POST {url}/login`), shares one login between concurrent commands
(a lock, re-checked after waiting), renews it `renew_margin` seconds before
`login_timestamp + session_expiration`, and on result code 2 (session expired) logs in again once
and retries the request once. A refused login raises AuthFailed and blocks further logins for
the pause `bridge.core.retry.LOGIN_REFUSED` states (5 s doubling to 60 s); meanwhile commands fail
fast with AuthFailed.

Request shapes (`settings.mode`):

- json (default): always `POST {url}/device/default_schedule/timerange` (or
  `/device/device_schedule/timerange`, `/user/contact/schedule/timerange`) with
  `{"acctid", "session", "request_type": "create|read|update|delete", "device": [{"device_id",
  "default_schedule": [{"schedule_id", "timerange": [...] | null}]}]}`, or for a contact schedule
  `"user": [{"user_id", "contact": [{"contact_id", "schedule": [{"schedule_id", "timerange"}]}]}]`.
- uri: `GET|POST|PUT|DELETE {url}/{acctid}/{session}/device/{device_id}/default_schedule/
  {schedule_id}/timerange[/{range_id}]` (contact: `.../user/{user_id}/contact/{contact_id}/
  schedule/{schedule_id}/timerange[...]`). Create and update send `{"timerange": [{...}]}` as a
  JSON body instead of the doc's `/interval/{INTERVAL}` path segments: one request can then set
  several fields, and `start`/`end` text needs no path escaping.

Retries (see `bridge.schedules.transport`): connect failures and 429 for every operation; read
timeouts, other transport errors and 5xx for all but create, which is never sent twice.

Errors: no answer within the deadline -> UpstreamTimeout; unreachable (retries exhausted, TLS
refused) -> UpstreamUnavailable; `result.success == false` whatever the HTTP status ->
UpstreamError with `detail={"code", "message"}` from Sensaphone. The password is never logged
nor put in a message. In uri mode the session id is in the path: this module never logs URLs, but
httpx's own INFO line ("HTTP Request: ...") does, so keep the `httpx` logger at WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

import httpx
import msgspec

from bridge.config import ScheduleParent, SensaphoneSettings
from bridge.core.breaker import CircuitBreaker
from bridge.core.retry import LOGIN_REFUSED, Backoff
from bridge.errors import (
    AuthFailed,
    InvalidPayload,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.schedules.replies import TimeRange, Unusable, ranges_in, read_login
from bridge.schedules.transport import Envelope, HttpRequest, Result, Transport, refused

__all__ = [
    "LimitObserver",
    "LoginKind",
    "NullObserver",
    "Operation",
    "Parent",
    "SensaphoneClient",
    "SensaphoneObserver",
    "TimeRange",
]

log = logging.getLogger(__name__)

Operation = Literal["login", "read", "create", "update", "delete"]
LoginKind = Literal["initial", "renew", "expired"]
SESSION_EXPIRED: Final = 2
# Each kind's parents in the resource tree: (array key, id field), outermost first.
_LEVELS: Final = {
    "default_schedule": (("device", "device_id"), ("default_schedule", "schedule_id")),
    "device_schedule": (("device", "device_id"), ("device_schedule", "schedule_id")),
    "contact_schedule": (
        ("user", "user_id"),
        ("contact", "contact_id"),
        ("schedule", "schedule_id"),
    ),
}
_METHODS: Final = {"read": "GET", "create": "POST", "update": "PUT", "delete": "DELETE"}


class Parent(msgspec.Struct, frozen=True):
    """Where a schedule lives: a device's default or device schedule, or a contact's schedule."""

    kind: Literal["default_schedule", "device_schedule", "contact_schedule"]
    device_id: int | None = None
    user_id: int | None = None
    contact_id: int | None = None

    @classmethod
    def from_settings(cls, parent: ScheduleParent) -> Parent:
        return cls(parent.kind, parent.device_id, parent.user_id, parent.contact_id)

    def ids(self) -> tuple[int, ...]:
        """The parents' ids, outermost first; InvalidPayload if one the kind needs is missing."""
        wanted = ("user_id", "contact_id") if self.kind == "contact_schedule" else ("device_id",)
        values = [getattr(self, name) for name in wanted]
        if any(v is None for v in values):
            raise InvalidPayload(f"a {self.kind} needs {' and '.join(wanted)}")
        return tuple(values)


class SensaphoneObserver(Protocol):
    """Metrics hooks. Labels are operations, outcomes and reasons: never ids or users.

    outcome: ok, error, timeout, unavailable, auth_failed.
    """

    def request_done(self, operation: str, outcome: str, seconds: float) -> None: ...
    def login(self, kind: LoginKind, ok: bool) -> None: ...
    def retry(self, operation: str, reason: str) -> None: ...


@runtime_checkable
class LimitObserver(Protocol):
    """Optional on a SensaphoneObserver: counts a bound that refused something, by its name
    (the `limit` label of iotbridge_limits_reached_total: `sensaphone_reply`)."""

    def limit_reached(self, limit: str) -> None: ...


class NullObserver:
    def request_done(self, operation: str, outcome: str, seconds: float) -> None:
        pass

    def login(self, kind: LoginKind, ok: bool) -> None:
        pass

    def retry(self, operation: str, reason: str) -> None:
        pass


@dataclass(frozen=True)
class _Session:
    acctid: int | str
    token: str | int  # as the login reply gave it: sent back unchanged
    renew_at: float  # time.monotonic()


class SensaphoneClient:
    """Timerange CRUD on one Sensaphone account. Construction does no I/O; `close()` when done.

    Each call returns the timerange array the API answered for that schedule (read: all ranges;
    create: the new range(s) with their `range_id`; update: the updated range(s); delete: what
    the API echoes, possibly empty), read tolerantly (bridge.schedules.replies: fields nobody
    documented kept in `TimeRange.extra`), and raises the bridge's UpstreamError family or
    InvalidPayload (missing parent ids, update/delete without a range id). A read whose reply
    is unusable raises UpstreamError; a change whose reply is unusable returns [] (logged).
    """

    def __init__(
        self,
        settings: SensaphoneSettings,
        *,
        client: httpx.AsyncClient | None = None,
        metrics: SensaphoneObserver | None = None,
        auth_backoff: Backoff = LOGIN_REFUSED,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """`breaker`: fail fast while Sensaphone does not answer (bridge.core.breaker)."""
        self._settings = settings
        self._url = settings.url.rstrip("/")
        self._observer: SensaphoneObserver = metrics or NullObserver()
        observer = self._observer
        on_limit = observer.limit_reached if isinstance(observer, LimitObserver) else _ignore
        self._transport = Transport(settings, client, observer.retry, breaker, on_limit)
        self._session: _Session | None = None
        self._login_lock = asyncio.Lock()
        self._auth_pause = auth_backoff
        self._auth_refusals = 0  # refused logins in a row
        self._auth_backoff = 0.0
        self._auth_blocked_until = 0.0

    async def close(self) -> None:
        await self._transport.close()

    async def read(self, schedule_id: int, parent: Parent) -> list[TimeRange]:
        return await self._call("read", schedule_id, parent, None)

    async def create(self, schedule_id: int, parent: Parent, rng: TimeRange) -> list[TimeRange]:
        return await self._call("create", schedule_id, parent, rng)

    async def update(self, schedule_id: int, parent: Parent, rng: TimeRange) -> list[TimeRange]:
        if rng.range_id is None:
            raise InvalidPayload("update needs range_id")
        return await self._call("update", schedule_id, parent, rng)

    async def delete(self, schedule_id: int, parent: Parent, range_id: int) -> list[TimeRange]:
        return await self._call("delete", schedule_id, parent, TimeRange(range_id=range_id))

    # -- one command -------------------------------------------------------------------------

    async def _call(
        self, op: Operation, schedule_id: int, parent: Parent, rng: TimeRange | None
    ) -> list[TimeRange]:
        ids = (*parent.ids(), schedule_id)
        started = time.monotonic()
        deadline = started + self._settings.deadline
        outcome = "error"
        try:
            # The hard cap: per-attempt httpx timeouts are per phase, not per request.
            async with asyncio.timeout(self._settings.deadline):
                envelope = await self._with_session(op, deadline, parent, ids, rng)
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
            raise UpstreamTimeout(f"Sensaphone {op}: no answer within the deadline") from None
        except UpstreamError as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._observer.request_done(op, outcome, time.monotonic() - started)
        try:
            return ranges_in(envelope.response, _LEVELS[parent.kind], ids, strict=op == "read")
        except Unusable as exc:
            if op == "read":
                raise UpstreamError(f"Sensaphone's reply to the read is unusable: {exc}") from None
            # The change was carried out: an echo we cannot read must not make it an error.
            log.warning("Sensaphone carried out the %s; its reply is unreadable: %s", op, exc)
            return []

    async def _with_session(
        self,
        op: Operation,
        deadline: float,
        parent: Parent,
        ids: tuple[int, ...],
        rng: TimeRange | None,
    ) -> Envelope:
        session = await self._current_session(deadline)
        envelope = await self._exchange(op, self._request(op, session, parent, ids, rng), deadline)
        if not envelope.result.success and envelope.result.code == SESSION_EXPIRED:
            log.info("Sensaphone session expired; logging in again")
            session = await self._fresh_session(session, deadline)
            request = self._request(op, session, parent, ids, rng)
            envelope = await self._exchange(op, request, deadline)
        if not envelope.result.success:
            raise refused(op, envelope.result)
        return envelope

    def _request(
        self,
        op: Operation,
        session: _Session,
        parent: Parent,
        ids: tuple[int, ...],
        rng: TimeRange | None,
    ) -> HttpRequest:
        levels = _LEVELS[parent.kind]
        keys = [key for key, _ in levels]
        fields = rng.wire() if rng is not None else None
        if self._settings.mode == "uri":
            path = "/".join(f"{key}/{ident}" for key, ident in zip(keys, ids, strict=True))
            url = f"{self._url}/{session.acctid}/{session.token}/{path}/timerange"
            if op in ("update", "delete") and fields is not None:
                url += f"/{fields.pop('range_id')}"
            body = {"timerange": [fields]} if op in ("create", "update") else None
            return HttpRequest(_METHODS[op], url, body)
        tree: Any = [fields] if fields is not None else None
        node: dict[str, Any] = {"timerange": tree}
        for (key, id_field), ident in reversed(list(zip(levels, ids, strict=True))):
            node = {key: [{id_field: ident, **node}]}
        # The API documentation's JSON example says "uuid" where its property table says
        # "session"; the table (and the login reply) name it session, so that is what we send.
        auth: dict[str, Any] = {"acctid": session.acctid, "session": session.token}
        return HttpRequest(
            "POST", f"{self._url}/{'/'.join(keys)}/timerange", {**auth, "request_type": op, **node}
        )

    # -- session -------------------------------------------------------------------------------

    async def _current_session(self, deadline: float) -> _Session:
        session = self._session
        if session is not None and time.monotonic() < session.renew_at:
            return session
        async with self._login_lock:
            # Whoever held the lock before us may have logged in already: no stampede.
            session = self._session
            if session is not None and time.monotonic() < session.renew_at:
                return session
            return await self._login("initial" if session is None else "renew", deadline)

    async def _fresh_session(self, stale: _Session, deadline: float) -> _Session:
        async with self._login_lock:
            if self._session is not None and self._session is not stale:
                return self._session
            return await self._login("expired", deadline)

    async def _login(self, kind: LoginKind, deadline: float) -> _Session:
        now = time.monotonic()
        if now < self._auth_blocked_until:
            wait = self._auth_blocked_until - now
            raise AuthFailed(
                f"Sensaphone refused our credentials; next login attempt in {wait:.1f} s"
            )
        body = {
            "request_type": "create",
            "resource": "login",
            "user_name": self._settings.user,
            "password": self._settings.password or "",
        }
        started, outcome = now, "error"
        try:
            envelope = await self._exchange(
                "login", HttpRequest("POST", self._url + "/login", body), deadline
            )
            if not envelope.result.success:
                raise self._auth_refused(envelope.result)
            session = self._new_session(envelope.response)
            outcome = "ok"
        except UpstreamError as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._observer.request_done("login", outcome, time.monotonic() - started)
            self._observer.login(kind, outcome == "ok")
        self._session, self._auth_refusals = session, 0
        log.info("Logged in to Sensaphone (%s)", kind)
        return session

    def _auth_refused(self, result: Result) -> AuthFailed:
        self._auth_refusals += 1
        self._auth_backoff = self._auth_pause.delay(self._auth_refusals)
        self._auth_blocked_until = time.monotonic() + self._auth_backoff
        self._session = None
        log.warning(
            "Sensaphone refused the login for user %r: %s (code %s); next attempt in %.0f s",
            self._settings.user,
            result.message,
            result.code,
            self._auth_backoff,
        )
        return AuthFailed(
            f"Sensaphone refused the login: {result.message} (code {result.code}); "
            f"next attempt in {self._auth_backoff:.0f} s",
            detail={"code": result.code, "message": result.message},
        )

    def _new_session(self, response: Any) -> _Session:
        try:
            login = read_login(response)
        except Unusable as exc:
            raise UpstreamError(f"Sensaphone login reply is malformed: {exc}") from None
        if login.session_expiration is None:
            # No lifetime given: keep the session until Sensaphone answers code 2.
            return _Session(login.acctid, login.session, float("inf"))
        lifetime = max(login.session_expiration, 0.0)
        stamp = login.login_timestamp
        remaining = lifetime if stamp is None else stamp + lifetime - time.time()
        if not 0 < remaining <= lifetime + 60:
            # Our clock and Sensaphone's disagree by more than the lifetime: trust the lifetime.
            remaining = lifetime
        # A margin longer than half the lifetime would renew on every request (short test sessions).
        margin = min(self._settings.renew_margin, lifetime / 2)
        return _Session(login.acctid, login.session, time.monotonic() + remaining - margin)

    async def _exchange(self, op: Operation, request: HttpRequest, deadline: float) -> Envelope:
        # Only a create is unsafe to repeat: the others set, read or remove a known state.
        return await self._transport.exchange(op, request, deadline, idempotent=op != "create")


def _ignore(_limit: str) -> None:
    pass


def _outcome(exc: UpstreamError) -> str:
    for cls, name in (
        (AuthFailed, "auth_failed"),
        (UpstreamTimeout, "timeout"),
        (UpstreamUnavailable, "unavailable"),
    ):
        if isinstance(exc, cls):
            return name
    return "error"
