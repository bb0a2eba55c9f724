"""Dispatch: order, concurrency, results and acknowledgement for every inbound command.

- Commands with the same key (one pager, the base station, one schedule) run one after another in
  the order received; different keys run concurrently.
- At most `max_in_flight` commands are being worked on. `submit()` does not return while the
  bridge is full, so the MQTT reader stops reading (back-pressure) and nothing is dropped.
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

from bridge import models, outbox
from bridge.answers import Answers
from bridge.config import LimitSettings
from bridge.errors import BridgeError, Expired
from bridge.logs import correlation_id
from bridge.metrics import Metrics
from bridge.mqtt import Inbound
from bridge.routing import Request, Router, transaction_of
from bridge.topics import BaseTopic, PagerTopic, ScheduleTopic, Topics, is_publishable

log = logging.getLogger(__name__)

Execute = Callable[[Request], Awaitable[Any]]


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
        deadline: float = 30.0,
    ) -> Awaitable[None]: ...


# Failures where the command was not carried out for want of an answer: parked for an operator.
DEADLETTER_CODES = frozenset({"upstream_timeout", "upstream_unavailable", "auth_failed"})
_ROUTES = {PagerTopic: "pager", BaseTopic: "pager_base", ScheduleTopic: "schedule"}


class Dispatcher:
    """Runs commands through `execute` in per-key lanes, answers and acknowledges them."""

    def __init__(
        self, router: Router, link: Link, execute: Execute, metrics: Metrics, limits: LimitSettings
    ) -> None:
        self._router = router
        self._link = link
        self._execute = execute
        self._metrics = metrics
        self._limits = limits
        self._answers = Answers(limits.dedup_window, limits.dedup_size)
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self._lanes: dict[tuple[str, int], deque[tuple[Inbound, Request]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._count = 0

    async def submit(self, inbound: Inbound) -> None:
        """Take one message; waits while `max_in_flight` commands are already in progress."""
        await self._slots.acquire()
        self._count += 1
        self._idle.clear()
        self._metrics.in_flight.inc()
        try:
            request = self._router.route(inbound.topic, inbound.payload)
        except BridgeError as exc:
            self._spawn(self._answer_invalid(inbound, exc))
            return
        except Exception as exc:
            # A bug in routing must not take the reader (and with it every command) down, nor
            # make a poison message that is redelivered forever: it is answered like any error.
            log.exception("routing %s failed unexpectedly", inbound.topic)
            self._spawn(self._answer_invalid(inbound, BridgeError(f"internal error: {exc}")))
            return
        lane = self._lanes.get(request.key)
        if lane is not None:
            lane.append((inbound, request))
            return
        self._lanes[request.key] = deque([(inbound, request)])
        self._spawn(self._run_lane(request.key))

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

    async def _run_lane(self, key: tuple[str, int]) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                inbound, request = lane[0]
                await self._process(inbound, request)
                lane.popleft()
        finally:
            del self._lanes[key]

    async def _process(self, inbound: Inbound, request: Request) -> None:
        command = request.command
        route, action = _ROUTES[type(request.target)], str(command.__struct_config__.tag)
        correlation_id.set(_correlation(command.transaction, inbound))
        key = Answers.key(inbound.topic, command.transaction, inbound.correlation)
        earlier = self._answers.get(key)
        if earlier is not None:
            await self._finish(inbound, earlier, route, action, "duplicate")
            return
        with outbox.collecting() as deferred:
            try:
                self._check_age(inbound, command)
                data = await self._execute(request)
                result = models.Result(status="ok", transaction=command.transaction, data=data)
            except BridgeError as exc:
                result = _error_result(exc, command.transaction)
                if exc.code in DEADLETTER_CODES:
                    result = await self._deadletter(inbound, result, route)
            except Exception as exc:
                log.exception("command on %s failed unexpectedly", inbound.topic)
                result = _error_result(BridgeError(f"internal error: {exc}"), command.transaction)
        payload = models.ENCODER.encode(result)
        self._answers.put(key, payload)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s on %s: %s", route, action, inbound.topic, _outcome(result))
        await self._finish(inbound, payload, route, action, _outcome(result), deferred)

    async def _deadletter(
        self, inbound: Inbound, result: models.Result, route: str
    ) -> models.Result:
        """Park a command that could not be carried out; its result says where."""
        assert result.error is not None
        letter = models.DeadLetter(
            topic=inbound.topic,
            payload=inbound.payload.decode("utf-8", "replace"),
            reason=result.error.message,
            error=result.error,
        )
        topic = self._router.topics.deadletter
        try:
            await self._link.publish_soon(topic, models.ENCODER.encode(letter))
        except BridgeError as exc:
            log.warning("could not publish to %s: %s", topic, exc)
            return result
        self._metrics.deadletters.labels(route, result.error.code).inc()
        detail = result.error.detail if isinstance(result.error.detail, dict) else {}
        error = msgspec.structs.replace(result.error, detail={**detail, "deadletter": topic})
        return msgspec.structs.replace(result, error=error)

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

    async def _answer_invalid(self, inbound: Inbound, exc: BridgeError) -> None:
        try:
            transaction = transaction_of(inbound.payload)
        except Exception:  # noqa: BLE001 - best effort; the answer must go out regardless
            transaction = None
        result = _error_result(exc, transaction)
        payload = models.ENCODER.encode(result)
        await self._finish(inbound, payload, "invalid", "none", exc.code)

    async def _finish(
        self,
        inbound: Inbound,
        payload: bytes,
        route: str,
        action: str,
        outcome: str,
        deferred: list[Awaitable[object]] | None = None,
    ) -> None:
        """Publish the result (after the command's deferred publishes), then acknowledge."""
        try:
            await self._reply(inbound, payload, deferred or [])
            self._link.ack(inbound)
        except BridgeError as exc:
            # Not acknowledged: the broker will deliver the command again.
            log.warning("result for %s not published (%s); left for redelivery", inbound.topic, exc)
            outcome = "unanswered"
        finally:
            metrics = self._metrics
            metrics.child(metrics.commands, route, action, outcome).inc()
            seconds = time.perf_counter() - inbound.received
            metrics.child(metrics.command_seconds, route).observe(seconds)
            self._metrics.in_flight.dec()
            self._slots.release()
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def _reply(
        self, inbound: Inbound, payload: bytes, sends: list[Awaitable[object]]
    ) -> None:
        topic = Topics.result(inbound.topic)
        # publish_soon writes at once, after the command's deferred state publishes: in order.
        if is_publishable(topic):
            sends.append(self._link.publish_soon(topic, payload))
        response = inbound.response_topic
        if response and is_publishable(response) and not self._router.topics.in_namespace(response):
            sends.append(
                self._link.publish_soon(response, payload, correlation=inbound.correlation)
            )
        if len(sends) == 1:
            await sends[0]
        elif sends:
            await asyncio.gather(*sends)


def _correlation(transaction: str | int | None, inbound: Inbound) -> str:
    """The command's transaction if it has one, else a short id of its own."""
    if transaction is not None:
        return str(transaction)[:64]
    return f"m{inbound.generation}-{inbound.mid}"


def _outcome(result: models.Result) -> str:
    return result.error.code if result.error else "ok"


def _error_result(exc: BridgeError, transaction: str | int | None) -> models.Result:
    error = models.ErrorInfo(code=exc.code, message=exc.message, detail=exc.detail)
    return models.Result(status="error", transaction=transaction, error=error)
