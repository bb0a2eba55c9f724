"""The pager feature: T7470 operations for MQTT commands, and changes made by anyone, republished.

Commands become CoAP requests through `bridge.coap.client.Transmitter` (the one CoAP client);
replies
and notifications go through one `SessionTracker`, which yields events, retained sessions and
statistics. `watch()` follows changes made elsewhere: Observe on `/v1/notify?action=get_sessions`,
re-registered when dropped, with a fallback to polling `GET /v1/sessions` with an ETag.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import msgspec

from bridge.coap.client import CoapReply
from bridge.config import PagerSettings
from bridge.contract import models, t7470
from bridge.contract.lenient import as_number
from bridge.contract.topics import Topics
from bridge.core import retry
from bridge.core.breaker import CircuitBreaker
from bridge.core.outbox import Outbound, Outbox, Publish, deliver
from bridge.errors import (
    BridgeError,
    CircuitOpen,
    InvalidPayload,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.ops.metrics import Metrics
from bridge.pager import t7470_read
from bridge.pager.observer import ObserverClaim
from bridge.pager.t7470_read import Reply, Session
from bridge.pager.tracking import SessionTracker

log = logging.getLogger(__name__)

SESSIONS = "/v1/sessions"
HISTORY = "/v1/sessions/history"
STATISTICS = "/v1/sessions/statistics"
SETTINGS = "/v1/settings"
# After this long on the polling fallback, Observe is tried again.
OBSERVE_RETRY = 60.0


class CoapClient(Protocol):
    """What the pager service needs of the CoAP side (`bridge.coap.client.Transmitter`)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        etag: bytes | None = None,
        gate: Callable[[], None] | None = None,
    ) -> CoapReply: ...

    def observe(
        self, path: str, *, query: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[CoapReply]: ...


class Breaker(Protocol):
    """What the pager service needs of its circuit breaker (`bridge.core.breaker`): asked
    before each request, rechecked when the request's turn comes, then told how it ended."""

    def before(self) -> None: ...

    def recheck(self) -> None: ...

    def success(self) -> None: ...

    def failure(self) -> None: ...

    def release(self) -> None: ...


class PagerService:
    """Carries out pager commands on one transmitter and keeps MQTT in step with it."""

    def __init__(
        self,
        transmitter: CoapClient,
        publish: Publish,
        topics: Topics,
        metrics: Metrics,
        settings: PagerSettings,
        *,
        site: str = "default",
        claim: ObserverClaim | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        """`breaker`: in front of every request; by default a `CircuitBreaker` as
        `settings.breaker_failures` and `settings.breaker_cooldown` say."""
        self._tx = transmitter
        # With replicas, only the holder of the observer claim observes and publishes events.
        self._claim = claim
        self._publish = publish
        self._metrics = metrics
        self._settings = settings
        self._site = site
        self.tracker = SessionTracker(topics)
        # Bodies of the latest replies to our own commands. The transmitter notifies observers
        # of a change with the very body it answered with; such a notification is news to no
        # one and is not decoded again (a notification shaped otherwise is folded as usual).
        self._answered: collections.deque[bytes] = collections.deque(maxlen=16)
        if breaker is None:
            breaker = CircuitBreaker(
                "pager",
                metrics,
                failures=settings.breaker_failures,
                cooldown=settings.breaker_cooldown,
                site=site,
            )
        self.breaker = breaker

    # -- commands --------------------------------------------------------------------------

    async def execute(self, number: int, command: models.Command, box: Outbox) -> Any:
        """Carry out a `pager/<number>/action` command; return the result's `data`. What it
        changed (session, events, statistics) goes out through the command's `box`."""
        query: dict[str, str | int] = {"number": number}
        body: t7470.Wire
        match command:
            case models.Start():
                body = t7470.CreateSession(
                    number=number,
                    goal=command.goal,
                    label=command.label,
                    partySize=command.partySize,
                    action="page" if command.page else None,
                )
                reply = await self._call(box, "start", "POST", SESSIONS, body=body)
            case models.Page() | models.Clear() | models.Remove():
                action = command.__struct_config__.tag
                mode = command.pageMode if isinstance(command, models.Page) else None
                body = t7470.UpdateSession(action=str(action), pageMode=mode)
                reply = await self._call(box, str(action), "PUT", SESSIONS, query, body=body)
            case models.Update():
                if command.goal is None and command.label is None and command.partySize is None:
                    raise InvalidPayload("update needs at least one of goal, label, partySize")
                body = t7470.UpdateSession(
                    goal=command.goal, label=command.label, partySize=command.partySize
                )
                reply = await self._call(box, "update", "PUT", SESSIONS, query, body=body)
            case models.Delete():
                reply = await self._call(box, "delete", "DELETE", SESSIONS, query)
            case models.Get():
                reply = await self._call(box, "get", "GET", SESSIONS, query)
                return _one_session(reply)
            case models.Alert():
                body = t7470.StandalonePage(
                    number=number,
                    pageMode=command.pageMode,
                    message=command.message,
                    systemId=command.systemId,
                )
                await self._call(box, "alert", "POST", "/v1/page", body=body)
                return {"number": number, "paged": True}
            case _:
                raise InvalidPayload(f"not a pager command: {type(command).__name__}")
        return _one_session(reply)

    async def execute_base(self, command: models.Command, box: Outbox) -> Any:
        """Carry out a `pager/base/action` command; return the result's `data`."""
        match command:
            case models.ListSessions():
                reply = await self._call(box, "list", "GET", SESSIONS, complete=True)
                return {"sessions": _raw(reply.sessions), "statistics": reply.statistics}
            case models.ClearAll():
                reply = await self._call(box, "clear_all", "DELETE", SESSIONS)
                return {"cleared": _raw(reply.sessions)}
            case models.History():
                reply = await self._call(box, "history", "GET", HISTORY)
                return {"history": _raw(reply.history)}
            case models.ClearHistory():
                await self._call(box, "clear_history", "DELETE", HISTORY)
                return {"cleared": True}
            case models.GetStatistics():
                return (await self._call(box, "statistics", "GET", STATISTICS)).statistics
            case models.ClearStatistics():
                return (await self._call(box, "clear_statistics", "DELETE", STATISTICS)).statistics
            case models.GetSettings():
                return (await self._call(box, "get_settings", "GET", SETTINGS)).settings
            case models.SetSettings():
                body = t7470.DeviceSettings(**msgspec.structs.asdict(command.settings))
                # msgspec leaves out the fields left unset (omit_defaults): the device sees
                # only what the command changes.
                return (await self._call(box, "set_settings", "POST", SETTINGS, body=body)).settings
            case _:
                raise InvalidPayload(f"not a base command: {type(command).__name__}")

    async def _call(
        self,
        box: Outbox | None,
        operation: str,
        method: str,
        path: str,
        query: dict[str, str | int] | None = None,
        *,
        body: t7470.Wire | None = None,
        complete: bool = False,
    ) -> Reply:
        coap = await self._request(operation, method, path, query, body)
        try:
            reply = t7470_read.read(coap.payload)
        except t7470_read.Unreadable as exc:
            # The device did what it was asked (2.xx): its unreadable answer must not turn that
            # into an error. Said in the log and in the result; the state comes with the next
            # notification or read.
            log.warning("transmitter answered %s with an unreadable body: %s", coap.code, exc)
            return Reply({"unreadable_reply": str(exc)})
        if method != "GET":
            self._answered.append(coap.payload)
        await self._fold(reply, box, complete=complete)
        return reply

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        query: dict[str, str | int] | None,
        body: t7470.Wire | None,
        etag: bytes | None = None,
    ) -> CoapReply:
        """One request through the breaker, retried as `retry.PAGER` says (reads only)."""
        payload = t7470.encode(body) if body is not None else None

        async def attempt() -> CoapReply:
            try:
                return await self._attempt(operation, method, path, query, payload, etag)
            except CircuitOpen as exc:
                # Never sent: fail fast. Retrying would only wait out the deadline.
                raise retry.Failure(exc, retry.CIRCUIT_OPEN, sent=False) from exc
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                raise retry.Failure(exc, retry.NO_ANSWER) from exc

        def count(op: str, reason: str) -> None:
            self._metrics.upstream_retries.labels(retry.PAGER.upstream, op, reason).inc()

        return await retry.call(
            retry.PAGER,
            attempt,
            operation=operation,
            deadline=time.monotonic() + self._settings.deadline,
            idempotent=method == "GET",
            on_retry=count,
        )

    async def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        query: dict[str, str | int] | None,
        payload: bytes | None,
        etag: bytes | None,
    ) -> CoapReply:
        self.breaker.before()
        started = time.perf_counter()
        outcome = "ok"
        try:
            reply = await self._tx.request(
                method, path, query=query, body=payload, etag=etag, gate=self.breaker.recheck
            )
        except CircuitOpen as exc:
            outcome = exc.code
            self.breaker.release()
            raise
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            outcome = exc.code
            self.breaker.failure()
            raise
        except BaseException:
            outcome = "cancelled"
            self.breaker.release()
            raise
        else:
            self.breaker.success()
            if not reply.ok:
                outcome = "error"
                raise _device_error(reply)
            return reply
        finally:
            seconds = time.perf_counter() - started
            metrics = self._metrics
            metrics.child(metrics.upstream_seconds, "pager", operation, outcome).observe(seconds)

    async def _fold(self, reply: Reply, box: Outbox | None, *, complete: bool = False) -> None:
        """Publish what `reply` changed: into the command's `box`, or now (notifications)."""
        sessions = reply.sessions
        out = await self._resolve_vanished(sessions) if complete and sessions is not None else []
        out += self._changes(reply, complete)
        if self._claim is not None and not self._claim.holding:
            # A standby: the observing replica publishes the events of every change (it sees
            # them in its notifications); the retained state and results go out from here.
            out = [o for o in out if o.retain]
        await deliver(out, box, self._publish)

    def _changes(self, reply: Reply, complete: bool) -> list[Outbound]:
        out: list[Outbound] = []
        sessions = reply.sessions
        if sessions is not None:
            refused = self.tracker.refused
            changes = self.tracker.apply(sessions, complete=complete)
            out += changes.out
            for name in changes.events:
                self._metrics.child(self._metrics.pager_events, name).inc()
            if self.tracker.refused > refused:
                limit = self._metrics.child(self._metrics.limits_reached, "device_numbers")
                limit.inc(self.tracker.refused - refused)
                log.warning(
                    "transmitter reported %d session(s) with a number outside %s: not published",
                    self.tracker.refused - refused,
                    "the site's range",
                )
        # After the sessions: the published statistics count the active ones too.
        changed = self.tracker.statistics(reply.statistics)
        if changed:  # the gauges too only when they moved (every reply carries statistics)
            out += changed
            if reply.statistics is not None:
                numbers = {k: as_number(v) for k, v in reply.statistics.items()}
                self._metrics.set_pager_statistics(
                    self._site, {k: n for k, n in numbers.items() if n is not None}
                )
            self._metrics.child(self._metrics.pager_active_sessions, self._site).set(
                len(self.tracker.active)
            )
        return out

    async def _resolve_vanished(self, sessions: Iterable[Session]) -> list[Outbound]:
        """Sessions gone from a full list ended while unobserved: history says how."""
        gone = self.tracker.vanished(sessions)
        if not gone:
            return []
        ids = {self.tracker.active[n].id for n in gone}
        try:
            coap = await self._request("history", "GET", HISTORY, None, None)
            history = t7470_read.read(coap.payload).history or []
        except (BridgeError, t7470_read.Unreadable):
            return []  # the caller still ends them, as "cleared"
        ended = [s for s in history if s.id in ids]
        changes = self.tracker.apply(ended)
        for name in changes.events:
            self._metrics.child(self._metrics.pager_events, name).inc()
        return changes.out

    # -- following changes made by anyone --------------------------------------------------

    async def watch(self) -> None:
        """Follow the transmitter forever: Observe when it offers it, polling otherwise. With
        an observer claim (replicas), only while this replica holds it."""
        claim = self._claim
        if claim is None:
            await self._follow()
            return
        while True:
            await claim.wait(holding=True)
            follow = asyncio.create_task(self._follow(), name="pager-follow")
            await claim.wait(holding=False)
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            self._set_mode("standby")

    def learn(self, topic: str, payload: bytes) -> None:
        """A retained session another replica published (standbys only), so that on taking
        over this replica knows what was active and can tell what ended meanwhile."""
        if self._claim is not None and not self._claim.holding:
            self.tracker.learn(topic, payload)

    async def _follow(self) -> None:
        """Observe while the transmitter offers it; poll otherwise, trying Observe again now and
        then. A registration is never retried faster than the poll interval, and ever slower
        while it keeps failing: a device that answers it without registering us (RFC 7641
        §4.1), or drops it at once, must not get a request storm."""
        failures = 0
        while True:
            if not self._settings.observe:
                await self._poll_for(None)
                continue
            started = time.monotonic()
            outcome = await self._observe_once()
            if outcome == "unavailable":
                await self._poll_for(OBSERVE_RETRY)
                continue
            lasted = time.monotonic() - started
            failures = 0 if outcome == "observed" and lasted > OBSERVE_RETRY else failures + 1
            if failures == 0:  # a long, healthy observation ended: register again soon
                await asyncio.sleep(max(0.0, self._settings.poll_interval - lasted))
            else:  # poll meanwhile: changes keep coming while Observe is down
                await self._poll_for(
                    min(OBSERVE_RETRY, self._settings.poll_interval * 2 ** min(failures, 6))
                )

    async def _observe_once(self) -> str:
        """One Observe registration, until it ends: "observed" (it was registered and ended),
        "unavailable" (refused, or answered without registering us) or "failed"."""
        self._set_mode("observe")
        registered = False
        try:
            async for reply in self._tx.observe("/v1/notify", query={"action": "get_sessions"}):
                if not registered:
                    if not reply.ok or reply.observe is None:
                        why = reply.code if not reply.ok else "an answer without Observe"
                        log.info("transmitter does not offer Observe (%s); polling instead", why)
                        return "unavailable"
                    registered = True
                    await self._sync()
                await self._notified(reply)
        except BridgeError as exc:
            log.warning("observation of the transmitter dropped: %s", exc.message)
            return "failed"
        return "observed"

    async def _notified(self, coap: CoapReply) -> None:
        if coap.payload in self._answered:
            self._metrics.child(self._metrics.pager_notifications, "change").inc()
            return
        try:
            reply = t7470_read.read(coap.payload)
        except t7470_read.Unreadable as exc:
            log.warning("unreadable notification from the transmitter: %s", exc)
            self._metrics.pager_notifications.labels("invalid").inc()
            return
        kind = "ping" if reply.is_ping else "change"
        self._metrics.child(self._metrics.pager_notifications, kind).inc()
        await self._fold(reply, None)

    async def _sync(self) -> None:
        """Read the full list once (after (re)registering, changes may have been missed)."""
        with contextlib.suppress(BridgeError):
            await self._call(None, "list", "GET", SESSIONS, complete=True)

    async def _poll_for(self, duration: float | None) -> None:
        self._set_mode("poll")
        etag: bytes | None = None
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            try:
                coap = await self._request("poll", "GET", SESSIONS, None, None, etag)
                if coap.code != "2.03":
                    etag = coap.etag
                    await self._fold(t7470_read.read(coap.payload), None, complete=True)
            except BridgeError as exc:
                log.debug("poll of the transmitter failed: %s", exc.message)
            except t7470_read.Unreadable as exc:
                log.warning("unreadable session list from the transmitter: %s", exc)
            await asyncio.sleep(self._settings.poll_interval)

    def _set_mode(self, mode: str) -> None:
        for each in ("observe", "poll", "standby"):
            gauge = self._metrics.child(self._metrics.pager_watch_mode, self._site, each)
            gauge.set(1 if each == mode else 0)


def _device_error(reply: CoapReply) -> UpstreamError:
    body: Any
    try:
        body = msgspec.json.decode(reply.payload) if reply.payload else None
    except msgspec.DecodeError:
        body = reply.payload.decode("utf-8", "replace")[:512]
    reason = body.get("error") if isinstance(body, dict) else None
    text = f"transmitter answered {reply.code}" + (f": {reason}" if reason else "")
    return UpstreamError(text, detail={"coap_code": reply.code, "body": body})


def _raw(sessions: list[Session] | None) -> list[dict[str, Any]]:
    return [session.raw for session in sessions or []]


def _one_session(reply: Reply) -> Any:
    """A command's data: the first session the device answered with, and the statistics."""
    sessions = reply.sessions or []
    data = {"session": sessions[0].raw if sessions else None, "statistics": reply.statistics}
    if "unreadable_reply" in reply.raw:
        data["unreadable_reply"] = reply.raw["unreadable_reply"]
    return data
