"""Dispatch: order, concurrency, results and acknowledgement for every inbound command.

- Commands with the same key (one pager, the base station, one schedule) run one after another in
  the order received, in that key's lane; different keys run concurrently, at most
  `max_in_flight` at once. Lanes waiting for a turn are served round-robin, one command each, so
  a flood on one pager cannot hold up the others.
- Admission, before any work: a site takes at most `rate` commands a second (a token bucket of
  `burst`), and a lane holds at most `lane_depth` waiting commands; past either the command is
  answered `overloaded` at once: a flood costs the flooder, not everyone.
- At most `max_queued` commands are accepted and unanswered. `submit()` does not return while
  that many are, so the MQTT reader stops reading (back-pressure) and no QoS 1 command is
  dropped (the link sheds QoS 0 ones past its own bound; see `shed()`).
- Every command gets exactly one result on `<command topic>/result` (and on an MQTT v5 Response
  Topic with its Correlation Data). The command is acknowledged to the broker only after the
  result was published and acknowledged; if that fails the broker redelivers the command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from bridge.config import LimitSettings
from bridge.contract import models
from bridge.contract.topics import Topics
from bridge.core.dedup import Dedup, Entry, Reuse, digest
from bridge.core.outbox import Outbound, Outbox, publisher
from bridge.core.routing import Request, Router, transaction_of
from bridge.errors import (
    BridgeError,
    Expired,
    InvalidPayload,
    LinkDown,
    Overloaded,
    PublishRefused,
    UpstreamError,
)
from bridge.mqtt.link import Inbound
from bridge.mqtt.names import is_publishable
from bridge.ops.logs import Budget, correlation_id
from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

# Carries out one command; its publishes besides the result go into the outbox it is given.
Execute = Callable[[Request, Outbox], Awaitable[Any]]
# What else to publish, ahead of the result, when a command failed: (its topic, its action or
# None where none could be read, the error) -> messages (the pager's `error` event, bridge.site).
Failed = Callable[[str, str | None, models.ErrorInfo], list[Outbound]]


class Link(Protocol):
    """What dispatch needs of the MQTT side (bridge.mqtt.MqttLink)."""

    def ack(self, inbound: Inbound) -> None: ...

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> Awaitable[None]: ...

    def publish_once(
        self, topic: str, payload: bytes, *, correlation: bytes | None = None
    ) -> bool: ...


# Failures where the command was not carried out for want of an answer, parked for an operator
# (as is any failure after retries were exhausted, whatever its code).
DEADLETTER_CODES = frozenset({"upstream_timeout", "upstream_unavailable", "auth_failed"})
# Failures that say the input was refused (logged at INFO); the others at WARNING.
INPUT_CODES = frozenset({"invalid_topic", "invalid_payload", "unknown_action", "expired"})
# Failed-command log lines per minute, per site.
LOG_BUDGET = 60
# The answer to a QoS 0 command shed because the link's inbox is full.
SHED = Overloaded(
    "the bridge is busy: QoS 0 commands beyond its queue are not carried out; "
    "try again later, or use QoS 1 to wait for room"
)
RETAINED = (
    "a retained command is never carried out: the broker stored it (retain flag) and replays "
    "it to every new subscriber; publish commands without the retain flag"
)


class Dispatcher:
    """Runs commands through `execute` in per-key lanes, answers and acknowledges them."""

    def __init__(
        self,
        router: Router,
        link: Link,
        execute: Execute,
        metrics: Metrics,
        limits: LimitSettings,
        responses: Callable[[str], str | None] = lambda _topic: "not_allowed",
        failed: Failed = lambda _topic, _action, _error: [],
    ) -> None:
        """`responses(topic)` says why a Response Topic is not answered (a metric label), or
        None when it may be (see `ResponseTopics`). `failed` gives what to announce, ahead of
        its result, about every command that failed, however early it was refused (except a
        QoS 0 command shed while the queue is full, see `shed`) and not again for a retry
        answered from the deduplication window."""
        self._responses = responses
        self._failed_out = failed
        self._ignored: set[str] = set()  # Response Topics already logged as ignored (bounded)
        self._router = router
        self._link = link
        self._execute = execute
        self._publish = publisher(link)
        self._metrics = metrics
        self._limits = limits
        self._dedup = Dedup(
            limits.dedup_window,
            limits.dedup_size,
            limits.dedup_bytes,
            evicted=metrics.child(metrics.limits_reached, "dedup").inc,
        )
        self._log_budget = Budget(LOG_BUDGET, 60.0)
        self._room = asyncio.Semaphore(limits.max_queued)
        self._bucket = TokenBucket(limits.rate, limits.burst)
        # Every lane with work is either running its first command or waiting in `_ready`.
        self._lanes: dict[tuple[str, int], deque[tuple[Inbound, Request]]] = {}
        self._ready: deque[tuple[str, int]] = deque()
        self._running = 0
        self._unexpected: set[str] = set()  # kinds of unexpected failure already logged in full
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._count = 0

    async def submit(self, inbound: Inbound) -> None:
        """Take one message; waits while `max_queued` commands are accepted and unanswered."""
        await self._room.acquire()
        self._accept()
        if inbound.size > self._limits.max_payload:
            self._reached("max_payload")
            self._spawn(self._answer_invalid(inbound, _too_large(inbound.size, self._limits)))
            return
        try:
            request = self._router.route(inbound.topic, inbound.payload)
        except BridgeError as exc:
            self._spawn(self._answer_invalid(inbound, exc))
            return
        except Exception as exc:  # noqa: BLE001 - contained: answered, counted, logged once
            # A bug in routing must not take the reader (and with it every command) down, nor
            # make a poison message that is redelivered forever: it is answered like bad input.
            self._spawn(self._answer_invalid(inbound, self._unreadable(inbound.topic, exc)))
            return
        lane = self._lanes.get(request.key)
        # The broker delivers again (DUP) what it delivered before a reconnect: admitted past
        # the rate and the lane's depth, so it meets its first delivery in the lane and gets
        # that outcome, never a second, different one. The broker's window bounds how many
        # come back; `max_queued` still holds.
        refusal = None if inbound.dup else self._admission(request.key, lane)
        if refusal is not None:
            self._spawn(self._shed_request(inbound, request, refusal))
        elif lane is not None:
            lane.append((inbound, request))
        else:
            self._lanes[request.key] = deque([(inbound, request)])
            self._ready.append(request.key)
            self._pump()

    def _admission(
        self, key: tuple[str, int], lane: deque[tuple[Inbound, Request]] | None
    ) -> Overloaded | None:
        """Why a new command may not join `key`'s lane now (the site's rate, the lane's
        depth), or None."""
        if not self._bucket.take():
            self._reached("rate")
            return Overloaded(
                f"this site takes at most {self._limits.rate:g} commands a second "
                f"(bursts of {self._limits.burst}); try again later"
            )
        if lane is not None and len(lane) >= self._limits.lane_depth:
            self._reached("lane_depth")
            return Overloaded(
                f"{len(lane)} commands already wait for {_lane_name(key)} "
                f"(limits.lane_depth); try again once they are answered"
            )
        return None

    def shed(self, inbound: Inbound) -> None:
        """Answer `overloaded`, at once and at QoS 0, to a QoS 0 command the link will not
        queue (its inbox is full): the answer is all such a command costs (no `failed`
        announcement either), so a flood is read through quickly and what others publish behind
        it is not held up."""
        self._reached("qos0_inbox")
        try:
            transaction = transaction_of(inbound.payload)
        except Exception:  # noqa: BLE001 - best effort; the answer must go out regardless
            transaction = None
        correlation_id.set(_correlation(transaction, inbound))
        result = _error_result(SHED, transaction)
        payload = models.ENCODER.encode(result)
        topic = Topics.result(inbound.topic)
        self._link.publish_once(topic, payload)
        response = inbound.response_topic
        if response and self._may_answer(response):
            self._link.publish_once(response, payload, correlation=inbound.correlation)
        self._note_failure(inbound, result)
        route, action = self._router.attempted(inbound.topic, inbound.payload)
        metrics = self._metrics
        metrics.child(metrics.commands, route, action, SHED.code).inc()
        seconds = time.perf_counter() - inbound.received
        metrics.child(metrics.command_seconds, route).observe(seconds)

    def _reached(self, limit: str) -> None:
        self._metrics.child(self._metrics.limits_reached, limit).inc()

    def _accept(self) -> None:
        self._count += 1
        self._idle.clear()
        self._metrics.in_flight.inc()

    def _unreadable(self, topic: str, exc: Exception) -> BridgeError:
        """The error result for input that made routing fail unexpectedly: bad input as far as
        the publisher is told. Logged with its traceback once per kind, then in one line."""
        if isinstance(exc, RecursionError):
            return InvalidPayload("payload is nested too deeply to be read")
        kind = type(exc).__name__
        if kind not in self._unexpected and len(self._unexpected) < 64:
            self._unexpected.add(kind)
            log.error("routing %s failed unexpectedly", topic, exc_info=exc)
        else:
            log.debug("routing %s failed unexpectedly: %s", topic, kind)
        return InvalidPayload(f"payload could not be read ({kind})")

    def _pump(self) -> None:
        """Start the next waiting lanes, in turn, while fewer than `max_in_flight` run."""
        ready, limit = self._ready, self._limits.max_in_flight
        while ready and self._running < limit:
            key = ready.popleft()
            self._running += 1
            self._spawn(self._run_next(key))

    async def drain(self, within: float) -> bool:
        """Wait until no command is in progress; False if `within` seconds ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_next(self, key: tuple[str, int]) -> None:
        """Carry out the first command of `key`'s lane; the lane then waits for its next turn
        at the back of the line (round-robin), or ends when empty."""
        lane = self._lanes[key]
        try:
            await self._process(*lane[0])
        finally:
            lane.popleft()
            self._running -= 1
            if lane:
                self._ready.append(key)
            else:
                del self._lanes[key]
            self._pump()

    async def _shed_request(self, inbound: Inbound, request: Request, exc: BridgeError) -> None:
        command = request.command
        correlation_id.set(_correlation(command.transaction, inbound))
        route, action = request.kind.route, str(command.__struct_config__.tag)
        await self._refuse(inbound, command.transaction, exc, route, action)

    async def _process(self, inbound: Inbound, request: Request) -> None:
        command = request.command
        route, action = request.kind.route, str(command.__struct_config__.tag)
        correlation_id.set(_correlation(command.transaction, inbound))
        if inbound.retain:
            retained = Expired(RETAINED)
            await self._refuse(inbound, command.transaction, retained, route, action, "retained")
            return
        identity, keyed = Dedup.identity(
            inbound.topic, command.transaction, inbound.correlation, inbound.payload
        )
        fingerprint = _fingerprint(command)
        try:
            earlier = self._dedup.earlier(identity, keyed, fingerprint, inbound.dup)
        except Reuse:
            refusal = InvalidPayload(_reused(command.transaction, self._limits.dedup_window))
            await self._refuse(inbound, command.transaction, refusal, route, action)
            return
        if earlier is not None and earlier.result is not None:
            if inbound.dup and earlier.published:
                # The broker redelivers a command whose result is out: acknowledged only.
                await self._finish(inbound, None, route, action, "redelivered")
            else:
                await self._finish(inbound, earlier.result, route, action, "duplicate", earlier)
            return
        entry = self._dedup.begin(identity, keyed, fingerprint)
        box = Outbox(self._publish)
        try:
            self._check_age(inbound, command)
            data = await self._execute(request, box)
            result = models.Result(status="ok", transaction=command.transaction, data=data)
        except BridgeError as exc:
            result = _error_result(exc, command.transaction)
            if exc.code in DEADLETTER_CODES or exc.attempts > 1:
                result = await self._deadletter(inbound, result, route, exc.attempts)
        except Exception as exc:  # noqa: BLE001 - contained: answered, counted, logged once
            result = _error_result(self._failed(inbound.topic, exc), command.transaction)
        payload = models.ENCODER.encode(result)
        self._dedup.finished(entry, payload)
        if result.error is not None:
            self._note_failure(inbound, result)
            box.send(self._failed_out(inbound.topic, action, result.error))
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s on %s: ok", route, action, inbound.topic)
        await self._finish(inbound, payload, route, action, _outcome(result), entry, box.started)

    async def _refuse(
        self,
        inbound: Inbound,
        transaction: str | int | None,
        exc: BridgeError,
        route: str,
        action: str,
        outcome: str | None = None,
    ) -> None:
        """Answer with an error without carrying the command out (nor remembering it); the
        metric's outcome is the error's code unless given."""
        result = _error_result(exc, transaction)
        self._note_failure(inbound, result)
        announced = self._announce_failure(inbound, action, result)
        payload = models.ENCODER.encode(result)
        outcome = outcome or exc.code
        await self._finish(inbound, payload, route, action, outcome, deferred=announced)

    def _announce_failure(
        self, inbound: Inbound, action: str | None, result: models.Result
    ) -> list[Awaitable[object]]:
        """Start publishing what `failed` gives for a command refused before it ran."""
        assert result.error is not None
        box = Outbox(self._publish)
        box.send(self._failed_out(inbound.topic, action, result.error))
        return box.started

    async def _deadletter(
        self, inbound: Inbound, result: models.Result, route: str, attempts: int
    ) -> models.Result:
        """Park a command that could not be carried out; its result says where."""
        assert result.error is not None
        letter = models.DeadLetter(
            topic=inbound.topic,
            payload=inbound.payload.decode("utf-8", "replace"),
            reason=result.error.message,
            error=result.error,
            attempts=attempts,
        )
        topic = self._router.topics.deadletter
        if not await self._park(letter, route, result.error.code):
            return result
        detail = result.error.detail if isinstance(result.error.detail, dict) else {}
        error = msgspec.structs.replace(result.error, detail={**detail, "deadletter": topic})
        return msgspec.structs.replace(result, error=error)

    def _note_failure(self, inbound: Inbound, result: models.Result) -> None:
        """One log line per failed command (the correlation id comes with the record): WARNING
        when an upstream failed us, INFO when the input was refused. Rate-limited, so a flood
        of bad input costs a line per so many, not a line each."""
        assert result.error is not None
        code = result.error.code
        level = logging.INFO if code in INPUT_CODES else logging.WARNING
        self._log(level, "command on %s failed: %s: %s", inbound.topic, code, result.error.message)

    def _log(self, level: int, message: str, *args: object) -> None:
        """Log within the site's budget of lines about failed commands, saying how many were
        left out when there is room again."""
        if not log.isEnabledFor(level):
            return
        suppressed = self._log_budget.take()
        if suppressed is None:
            return
        if suppressed:
            log.warning(
                "%d more lines about failed commands were not logged (at most %d a minute)",
                suppressed,
                LOG_BUDGET,
            )
        log.log(level, message, *args)

    async def _park(self, letter: models.DeadLetter, route: str, label: str) -> bool:
        """Publish `letter` on the dead-letter topic; False (logged) if that failed too."""
        topic = self._router.topics.deadletter
        try:
            await self._link.publish_soon(topic, models.ENCODER.encode(letter))
        except BridgeError as exc:
            log.warning("could not publish to %s: %s", topic, exc.message)
            return False
        self._metrics.deadletters.labels(route, label).inc()
        return True

    def _check_age(self, inbound: Inbound, command: models.Command) -> None:
        """Refuse a command that is too old to be worth carrying out."""
        max_age = self._limits.max_age
        if command.sent_at is not None and max_age:
            age = time.time() - command.sent_at
            if age > max_age:
                raise Expired(
                    f"sent {age:.0f} s ago; commands older than {max_age:g} s are refused"
                )
        if inbound.expiry is not None:
            waited = time.perf_counter() - inbound.received
            if waited > inbound.expiry:
                raise Expired(f"its MQTT message expiry passed while it waited {waited:.1f} s")

    def _failed(self, topic: str, exc: Exception) -> BridgeError:
        """The error result for a command whose handling failed unexpectedly (a bug, or an
        upstream reply nothing expected): `upstream_error` from the documented vocabulary, as
        the command was being carried out. Logged with its traceback once per kind."""
        kind = type(exc).__name__
        if kind not in self._unexpected and len(self._unexpected) < 64:
            self._unexpected.add(kind)
            log.error("command on %s failed unexpectedly", topic, exc_info=exc)
        else:
            self._log(logging.WARNING, "command on %s failed unexpectedly: %s", topic, kind)
        return UpstreamError(f"the command failed unexpectedly ({kind}); the bridge logged it")

    async def _answer_invalid(self, inbound: Inbound, exc: BridgeError) -> None:
        try:
            transaction = transaction_of(inbound.payload)
        except Exception:  # noqa: BLE001 - best effort; the answer must go out regardless
            transaction = None
        result = _error_result(exc, transaction)
        payload = models.ENCODER.encode(result)
        correlation_id.set(_correlation(transaction, inbound))
        route, action = self._router.attempted(inbound.topic, inbound.payload)
        self._note_failure(inbound, result)
        read = None if action == "none" else action
        announced = self._announce_failure(inbound, read, result)
        await self._finish(inbound, payload, route, action, exc.code, deferred=announced)

    async def _finish(
        self,
        inbound: Inbound,
        payload: bytes | None,
        route: str,
        action: str,
        outcome: str,
        entry: Entry | None = None,
        deferred: list[Awaitable[object]] | None = None,
    ) -> None:
        """Publish the result (after the command's deferred publishes), then acknowledge.

        A result the broker refuses (PUBACK 0x80 or more, e.g. an ACL) is not a delivery: the
        command is parked on the dead-letter topic with the refusal, and acknowledged only once
        that is out. Anything else that keeps the result from the broker leaves the command
        unacknowledged, for the broker to deliver again.
        """
        try:
            refused = None
            if payload is not None:
                refused = await self._reply(inbound, payload, deferred or [])
                if entry is not None and refused is None:
                    entry.published = True
            if refused is not None:
                outcome = "result_refused"
                letter = models.DeadLetter(
                    topic=inbound.topic,
                    payload=inbound.payload.decode("utf-8", "replace"),
                    reason=f"the result could not be published: {refused.message}",
                    error=models.ErrorInfo(
                        code=refused.code, message=refused.message, detail=refused.detail
                    ),
                )
                if not await self._park(letter, route, outcome):
                    raise refused
            self._link.ack(inbound)
        except BridgeError as exc:
            # Not acknowledged: the broker will deliver the command again (unless QoS 0).
            outcome = "unanswered"
            self._log(
                logging.WARNING,
                "result for %s not published (%s); %s",
                inbound.topic,
                exc.message,
                "left for redelivery" if inbound.qos else "QoS 0: not redelivered",
            )
        finally:
            metrics = self._metrics
            metrics.child(metrics.commands, route, action, outcome).inc()
            seconds = time.perf_counter() - inbound.received
            metrics.child(metrics.command_seconds, route).observe(seconds)
            self._metrics.in_flight.dec()
            self._room.release()
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def _reply(
        self, inbound: Inbound, payload: bytes, sends: list[Awaitable[object]]
    ) -> PublishRefused | None:
        """Publish the result after the deferred state publishes (publish_soon writes at once,
        so the wire order is theirs), and wait for every PUBACK.

        Returns the broker's refusal of the result itself, if it refused it. A refused state
        or Response Topic publish is only logged and counted (by the link): the result is out.
        Any other failure is raised.
        """
        topic = Topics.result(inbound.topic)
        result = self._link.publish_soon(topic, payload) if is_publishable(topic) else None
        response = inbound.response_topic
        if response and self._may_answer(response):
            sends.append(
                self._link.publish_soon(response, payload, correlation=inbound.correlation)
            )
        if result is not None:
            sends.append(result)
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        refused = None
        for work, outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, PublishRefused):
                refused = outcome if work is result else refused
            elif isinstance(outcome, BridgeError):
                raise outcome
            elif isinstance(outcome, BaseException):
                raise LinkDown(f"not published: {outcome!r}") from outcome
        return refused

    def _may_answer(self, response: str) -> bool:
        """Honour a Response Topic only where the configuration allows, and never inside a
        namespace the bridge serves or announces: no publisher may make the bridge write where
        it may not write itself. An ignored one is counted, and logged once."""
        why = self._responses(response) if is_publishable(response) else "not_a_topic"
        if why is None:
            return True
        self._metrics.child(self._metrics.response_topics_ignored, why).inc()
        if response not in self._ignored and len(self._ignored) < 256:
            self._ignored.add(response)
            log.info(
                "Response Topic %r ignored (%s); the result is on <topic>/result",
                response[:120],
                why,
            )
        return False


class TokenBucket:
    """`rate` tokens a second, at most `burst` held; `take()` spends one if there is one.
    A rate of 0 never refuses."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens, self._stamp = float(burst), clock()

    def take(self) -> bool:
        if not self._rate:
            return True
        now = self._clock()
        tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def _lane_name(key: tuple[str, int]) -> str:
    kind, number = key
    if kind == "pager":
        return f"pager {number}" if number else "the base station"
    return f"schedule {number}"


def _too_large(size: int, limits: LimitSettings) -> InvalidPayload:
    return InvalidPayload(f"payload is {size} bytes; the limit is {limits.max_payload}")


def _correlation(transaction: str | int | None, inbound: Inbound) -> str:
    """The command's transaction if it has one, else a short id of its own."""
    if transaction is not None:
        return str(transaction)[:64]
    return f"m{inbound.generation}-{inbound.mid}"


def _fingerprint(command: models.Command) -> bytes:
    """What makes two commands the same command: everything but `sent_at` and the key."""
    bare = msgspec.structs.replace(command, transaction=None, sent_at=None)
    return digest(models.ENCODER.encode(bare))


def _reused(transaction: str | int | None, window: float) -> str:
    key = (
        f"transaction {str(transaction)[:64]!r}" if transaction is not None else "correlation data"
    )
    return (
        f"{key} was already used within the last {window:g} s for a different command on this "
        "topic; it is not carried out: use a new one for each command"
    )


def _outcome(result: models.Result) -> str:
    return result.error.code if result.error else "ok"


def _error_result(exc: BridgeError, transaction: str | int | None) -> models.Result:
    error = models.ErrorInfo(code=exc.code, message=exc.message, detail=exc.detail)
    return models.Result(status="error", transaction=transaction, error=error)
