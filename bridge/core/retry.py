"""Retries, stated once for every upstream: what is retried, how long it waits, until when.

pager, CoAP (`PAGER`)
    retried: reads (GET) that got no answer (timed out, unreachable)
    never: writes (a page may have gone out); a request refused by the open circuit
    wait before retry n: 0.1 * 2**(n-1) s + up to 0.1 s, at most 2 s
    gives up: when the retry would start after `pager.deadline` (counted from the request)
Sensaphone, HTTPS (`SENSAPHONE`)
    retried: connect errors and 429, always; timeouts, broken connections and 5xx unless a create
    never: those on a create; a refused certificate; an answer that is no envelope; an open circuit;
        a reply over `sensaphone.max_reply_bytes` (asking again gets the same)
    wait before retry n: as the pager's, at most 5 s; after a 429 its Retry-After + up to 10 %
    gives up: when the retry would start after the command's deadline (`sensaphone.deadline`)
Sensaphone login refused (`LOGIN_REFUSED`)
    not a retry but a pause: wrong credentials stay wrong, and asking again and again may lock
    the account. After a refused login no login is tried for 5 s, doubling with each further
    refusal up to 60 s (no jitter: one client, one account); meanwhile schedule commands are
    answered `auth_failed` at once. A login that succeeds ends the pause.
MQTT broker (`reconnect`, handed to `bridge.mqtt.link.MqttLink` by the site)
    retried: every lost or refused connection, until `stop()`
    wait before reconnect n: uniform(reconnect_min, min(reconnect_max, reconnect_min * 2**(n-1))),
    n starting again at 1 after a connection that got up. Deliberately not the requests'
    formula: at its cap, `min(wait_max, ... + jitter)` is the cap itself, so bridges that lost
    one broker together would all come back in the same instant; drawn over the whole range
    ("full jitter"), they spread out, however long the broker was away.

The request retries (pager, Sensaphone) run on stamina (hynek/stamina, tenacity underneath):
`call()` is a `stamina.retry_context` loop whose backoff hook is the policy. An attempt that fails
raises a `Failure` naming its reason; the hook answers False (give up) or the seconds to wait, and
stamina sleeps exactly that (not at all under `stamina.set_testing`) and tries again, or raises.

Two things stamina does not do the way the bridge needs, so the hook does them:

- Deadlines. stamina's `timeout` is checked when an attempt ends (tenacity's `stop_after_delay`),
  not against the wait that follows, so a retry could start after it. The hook draws the wait
  itself and gives up when the retry would start after the deadline, an absolute
  `time.monotonic()` value: a command's time is shared by all its requests (and a login).
- Counting. stamina's retry hooks are process-wide and see neither the upstream, the operation,
  nor the `Metrics` instance (each bridge site and each test has its own registry), so they cannot
  count into `iotbridge_upstream_retries_total{upstream,operation,reason}`. The loop counts each
  retry as it starts; stamina's default hooks (a `stamina_retries_total` in prometheus_client's
  global registry, which /metrics does not serve, and a WARNING per retry) are turned off below.

The wait is stamina's own formula, `min(wait_max, wait_initial * 2**(n-1) + uniform(0,
wait_jitter))` (its `retry()` docstring), drawn by `Backoff.delay` because stamina keeps the
computation private.

A reconnect loop is not a retry: stamina retries a call until it returns or a budget runs out,
then raises. The MQTT link has no budget (it reconnects until stopped), a connection that got up
and later dropped is a success that starts the count again, and each failure is already reported
by the link (`iotbridge_mqtt_connect_failures_total`, a log line per cause). So the link keeps its
own loop, and takes its wait from here: `bridge.mqtt` sits below `bridge.core` and may not import
it (tests/unit/test_layers.py), so the site hands `reconnect(...)` to the link.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import stamina

from bridge.errors import UpstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Reasons a failed attempt can name (the `reason` label of iotbridge_upstream_retries_total).
NO_ANSWER: Final = "no_answer"  # pager: timed out or unreachable
CIRCUIT_OPEN: Final = "circuit_open"  # refused by the upstream's open circuit, never sent

_random = random.Random()  # noqa: S311 - spreading retries out, not cryptography

# See the module docstring: the bridge counts and logs its retries itself.
stamina.instrumentation.set_on_retry_hooks(())


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff, in seconds, with stamina's parameters and formula."""

    initial: float  # the least wait before the first retry
    maximum: float  # no wait is longer
    jitter: float  # up to this much is added at random, so that clients do not retry in step

    def delay(self, retry: int) -> float:
        """The wait before retry `retry` (1 for the first)."""
        # 2**64 times any wait is past any maximum; the bound keeps the float finite.
        grown = self.initial * 2.0 ** min(max(retry - 1, 0), 64)
        return min(self.maximum, grown + _random.uniform(0, self.jitter))


@dataclass(frozen=True)
class Policy:
    """One upstream's request retries. Reasons in neither set are never retried."""

    upstream: str  # the `upstream` label of iotbridge_upstream_retries_total
    always: frozenset[str]  # retried for any request: the upstream provably did not process it
    if_idempotent: frozenset[str]  # retried only when repeating the request is harmless
    backoff: Backoff
    attempts: int | None = None  # None: as many as the deadline leaves time for
    # An upstream that names its own wait (Retry-After) gets it, plus up to this fraction more:
    # clients it throttled together should not all come back in the same instant.
    server_jitter: float = 0.1

    def retries(self, reason: str, *, idempotent: bool) -> bool:
        return reason in self.always or (idempotent and reason in self.if_idempotent)

    def wait(self, retry: int, server_delay: float | None) -> float:
        """Seconds before retry `retry`: the upstream's own wait if it named one, else backoff."""
        if server_delay is None:
            return self.backoff.delay(retry)
        return server_delay + _random.uniform(0, server_delay * self.server_jitter)


# Seconds without a login attempt after the n-th refused login in a row (see the docstring).
LOGIN_REFUSED: Final = Backoff(initial=5.0, maximum=60.0, jitter=0.0)

PAGER: Final = Policy(
    upstream="pager",
    # No request is certain not to have reached the transmitter: only reads are repeated.
    always=frozenset(),
    # A GET changes nothing; a PUT, POST or DELETE may have been carried out (a page sent) with
    # only its answer lost, so writes are never repeated (the service passes idempotent=GET).
    if_idempotent=frozenset({NO_ANSWER}),
    # The transmitter is on the LAN and takes one exchange at a time: short waits, low cap.
    backoff=Backoff(initial=0.1, maximum=2.0, jitter=0.1),
)

SENSAPHONE: Final = Policy(
    upstream="sensaphone",
    # Nothing connected (connect errors, connect and pool timeouts), or 429, which says the
    # request was refused unprocessed (RFC 6585): safe even for a create.
    always=frozenset({"connect", "throttled"}),
    # The request may have been applied with its answer lost: repeated for read, update, delete
    # and login, never for a create (the API has no request ids: a second range would appear).
    # "untrusted" (a refused TLS certificate) and "error" (an answer that is no envelope) are in
    # neither set: asking again gets the same.
    if_idempotent=frozenset({"timeout", "transport", "server_error"}),
    # A shared cloud API: the same start as the pager, a longer cap.
    backoff=Backoff(initial=0.1, maximum=5.0, jitter=0.1),
)


class Failure(Exception):
    """Why an attempt failed, raised by the attempt inside `call()` and never out of it.

    Not part of the error tree (bridge.errors): when the policy gives up, `call()` raises
    `error`. `reason` is what the policy looks up; `delay` is the upstream's own wait
    (Retry-After), honoured instead of the backoff; `sent` is False for a request refused before
    it left (an open circuit), which does not count as an attempt.
    """

    def __init__(
        self, error: UpstreamError, reason: str, *, delay: float | None = None, sent: bool = True
    ) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.delay = delay
        self.sent = sent


async def call(
    policy: Policy,
    attempt: Callable[[], Awaitable[T]],
    *,
    operation: str,
    deadline: float,
    idempotent: bool,
    on_retry: Callable[[str, str], None],
) -> T:
    """Await `attempt()` until it returns, retrying as `policy` says while `deadline` allows.

    `deadline` is a time.monotonic() value: no retry starts after it. `on_retry(operation,
    reason)` is called as each retry starts. When the policy gives up, the last `Failure`'s error
    is raised with `attempts` set to the requests sent (at least 1). Anything else `attempt()`
    raises is not retried and passes through as it is.
    """
    hook = _Hook(policy, operation, deadline, idempotent=idempotent)
    try:
        return await _retrying(hook, attempt, on_retry)
    except Failure as failure:
        last = failure
    # Raised outside the handler, so that the error does not appear to have happened while
    # handling its own wrapper.
    last.error.attempts = max(hook.tries - (0 if last.sent else 1), 1)
    raise last.error


async def _retrying(
    hook: _Hook, attempt: Callable[[], Awaitable[T]], on_retry: Callable[[str, str], None]
) -> T:
    async for trying in stamina.retry_context(on=hook, attempts=hook.attempts, timeout=None):
        with trying:
            hook.tries = trying.num
            if trying.num > 1:
                on_retry(hook.operation, hook.reason)
            return await attempt()
    raise AssertionError("unreachable: stamina returns or raises")  # pragma: no cover


class _Hook:
    """stamina's backoff hook for one call: False to give up after a failed attempt, else the
    seconds to wait before the next."""

    def __init__(
        self, policy: Policy, operation: str, deadline: float, *, idempotent: bool
    ) -> None:
        self._policy = policy
        self._deadline = deadline
        self._idempotent = idempotent
        self.operation = operation
        self.attempts = policy.attempts
        self.tries = 0  # attempts begun, the one that just failed included
        self.reason = ""  # of the failure being retried

    def __call__(self, exc: Exception) -> bool | float:
        policy = self._policy
        if not isinstance(exc, Failure):
            return False  # cancellation, or a bug: never retried
        if not policy.retries(exc.reason, idempotent=self._idempotent):
            return False
        delay = policy.wait(self.tries, exc.delay)
        if time.monotonic() + delay >= self._deadline:
            return False
        self.reason = exc.reason
        log.info(
            "%s %s: %s; retry %d in %.2f s",
            policy.upstream,
            self.operation,
            exc.reason,
            self.tries,
            delay,
        )
        return delay


def reconnect(minimum: float, maximum: float) -> Callable[[int], float]:
    """The MQTT link's wait before reconnect `attempt` (0-based, 0 again after a connection
    that got up): jittered, doubling from `minimum` up to `maximum` (mqtt.reconnect_min/max)."""

    def wait(attempt: int) -> float:
        return _random.uniform(minimum, min(maximum, minimum * 2 ** min(attempt, 32)))

    return wait
