"""The retry policy (bridge.core.retry) on scripted attempts: what is retried and what is not,
the waits, the deadline, Retry-After, the retries counted and the attempts reported.

The same policy against a fake transmitter is in tests/unit/test_pager_service.py, and against
the Sensaphone simulator over HTTP in tests/adapter/test_sensaphone.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import stamina

from bridge.core import retry
from bridge.core.retry import Backoff, Failure, Policy
from bridge.errors import CircuitOpen, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.ops.metrics import Metrics

# Policy, reason, idempotent request: retried?
DECISIONS = [
    (retry.PAGER, "no_answer", True, True),
    (retry.PAGER, "no_answer", False, False),  # a write: it may have been carried out
    (retry.PAGER, "circuit_open", True, False),
    (retry.SENSAPHONE, "connect", False, True),  # never left: even a create
    (retry.SENSAPHONE, "throttled", False, True),  # 429: refused unprocessed
    (retry.SENSAPHONE, "timeout", True, True),
    (retry.SENSAPHONE, "timeout", False, False),
    (retry.SENSAPHONE, "transport", True, True),
    (retry.SENSAPHONE, "transport", False, False),
    (retry.SENSAPHONE, "server_error", True, True),
    (retry.SENSAPHONE, "server_error", False, False),
    (retry.SENSAPHONE, "untrusted", True, False),
    (retry.SENSAPHONE, "error", True, False),
    (retry.SENSAPHONE, "circuit_open", True, False),
]
NEVER = [(p, reason, idempotent) for p, reason, idempotent, retried in DECISIONS if not retried]
# A policy whose own backoff is too long for a test to wait out.
SLOW = Policy(
    upstream="test",
    always=frozenset({"throttled"}),
    if_idempotent=frozenset({"no_answer"}),
    backoff=Backoff(initial=10.0, maximum=10.0, jitter=0.0),
)


class Script:
    """An attempt: raises the scripted exceptions one per call, then answers "ok"."""

    def __init__(self, *failures: BaseException, forever: BaseException | None = None) -> None:
        self.failures = list(failures)
        self.forever = forever
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        if self.forever is not None:
            raise self.forever
        return "ok"


def no_answer() -> Failure:
    return Failure(UpstreamTimeout("no answer"), retry.NO_ANSWER)


def failure(reason: str) -> Failure:
    return Failure(UpstreamUnavailable(f"failed: {reason}"), reason, sent=reason != "circuit_open")


async def call(
    attempt: Script,
    metrics: Metrics,
    *,
    policy: Policy = retry.PAGER,
    seconds: float = 60.0,
    idempotent: bool = True,
) -> str:
    def count(operation: str, reason: str) -> None:
        metrics.upstream_retries.labels(policy.upstream, operation, reason).inc()

    return await retry.call(
        policy,
        attempt,
        operation="get",
        deadline=time.monotonic() + seconds,
        idempotent=idempotent,
        on_retry=count,
    )


def retries(metrics: Metrics, upstream: str = "pager", reason: str = "no_answer") -> float:
    labels = {"upstream": upstream, "operation": "get", "reason": reason}
    return metrics.registry.get_sample_value("iotbridge_upstream_retries_total", labels) or 0.0


@pytest.fixture
def no_waiting() -> Iterator[None]:
    """stamina's test mode: no waits (the policy still decides what is retried)."""
    with stamina.set_testing(True, attempts=100):
        yield


# -- the policy as data ---------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "reason", "idempotent", "retried"), DECISIONS)
def test_what_each_upstream_retries(
    policy: Policy, reason: str, idempotent: bool, retried: bool
) -> None:
    assert policy.retries(reason, idempotent=idempotent) is retried


@pytest.mark.parametrize(
    ("policy", "first", "longest"),
    [(retry.PAGER, (0.1, 0.2), 2.0), (retry.SENSAPHONE, (0.1, 0.2), 5.0)],
)
def test_the_waits_grow_from_a_tenth_of_a_second_to_the_cap(
    policy: Policy, first: tuple[float, float], longest: float
) -> None:
    assert policy.attempts is None  # bounded by the deadline alone
    for _ in range(200):
        assert first[0] <= policy.wait(1, None) <= first[1]
        assert policy.wait(60, None) == longest


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 70, 10_000])
def test_backoff_is_exponential_with_jitter_up_to_the_maximum(n: int) -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.5)
    low = min(30.0, 0.5 * 2.0 ** min(n - 1, 64))
    waits = {backoff.delay(n) for _ in range(200)}
    assert all(low <= w <= min(low + 0.5, 30.0) for w in waits)
    if low + 0.5 <= 30.0:
        assert len(waits) > 1  # jittered


def test_an_upstreams_own_wait_gets_up_to_a_tenth_more() -> None:
    waits = [retry.SENSAPHONE.wait(3, 2.0) for _ in range(200)]
    assert all(2.0 <= w <= 2.2 for w in waits)
    assert retry.SENSAPHONE.wait(3, 0.0) == 0.0


def test_stamina_reports_nothing_of_its_own() -> None:
    """Its default hooks would count into a registry /metrics does not serve and log a WARNING
    per retry; the bridge counts in iotbridge_upstream_retries_total instead."""
    assert stamina.instrumentation.get_on_retry_hooks() == ()


# -- retrying ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_waiting")
async def test_a_retried_failure_is_counted_and_the_answer_returned() -> None:
    metrics = Metrics()
    attempt = Script(no_answer(), no_answer())
    assert await call(attempt, metrics) == "ok"
    assert attempt.calls == 3
    assert retries(metrics) == 2


@pytest.mark.usefixtures("no_waiting")
@pytest.mark.parametrize(("policy", "reason", "idempotent"), NEVER)
async def test_what_is_not_retried_is_raised_at_once(
    policy: Policy, reason: str, idempotent: bool
) -> None:
    metrics = Metrics()
    refused = failure(reason)
    attempt = Script(refused)
    with pytest.raises(UpstreamError) as raised:
        await call(attempt, metrics, policy=policy, idempotent=idempotent)
    assert raised.value is refused.error
    assert raised.value.attempts == 1
    assert attempt.calls == 1
    assert retries(metrics, policy.upstream, reason) == 0


@pytest.mark.usefixtures("no_waiting")
async def test_an_open_circuit_after_failures_reports_the_requests_sent() -> None:
    metrics = Metrics()
    opened = CircuitOpen("pager circuit open")
    attempt = Script(no_answer(), no_answer(), Failure(opened, retry.CIRCUIT_OPEN, sent=False))
    with pytest.raises(CircuitOpen) as raised:
        await call(attempt, metrics)
    assert raised.value is opened
    assert raised.value.attempts == 2  # the refused third was never sent
    assert retries(metrics) == 2


async def test_no_retry_starts_after_the_deadline() -> None:
    metrics = Metrics()
    attempt = Script(forever=no_answer())
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as raised:
        await call(attempt, metrics, seconds=0.6)
    assert time.monotonic() - started < 0.6
    assert raised.value.attempts == attempt.calls > 1
    assert retries(metrics) == attempt.calls - 1


async def test_a_wait_that_would_end_past_the_deadline_is_not_begun() -> None:
    attempt = Script(no_answer())
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as raised:
        await call(attempt, Metrics(), seconds=0.05)  # the first wait is at least 0.1 s
    assert time.monotonic() - started < 0.05
    assert raised.value.attempts == 1


async def test_retry_after_replaces_the_backoff() -> None:
    metrics = Metrics()
    throttled = Failure(UpstreamUnavailable("throttled"), "throttled", delay=0.2)
    attempt = Script(throttled)
    started = time.monotonic()
    assert await call(attempt, metrics, policy=SLOW, idempotent=False) == "ok"
    assert 0.2 <= time.monotonic() - started < 0.5  # not SLOW's 10 s
    assert retries(metrics, "test", "throttled") == 1


async def test_retry_after_past_the_deadline_is_not_waited_for() -> None:
    throttled = Failure(UpstreamUnavailable("throttled"), "throttled", delay=5.0)
    attempt = Script(throttled)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as raised:
        await call(attempt, Metrics(), policy=SLOW, seconds=1.0)
    assert time.monotonic() - started < 0.2
    assert raised.value.attempts == 1


async def test_stamina_test_mode_skips_the_waits() -> None:
    attempt = Script(no_answer(), no_answer(), no_answer())
    started = time.monotonic()
    with stamina.set_testing(True, attempts=10):
        assert await call(attempt, Metrics(), policy=SLOW) == "ok"
    assert time.monotonic() - started < 1  # three of SLOW's 10 s waits skipped
    assert attempt.calls == 4


@pytest.mark.usefixtures("no_waiting")
async def test_anything_else_passes_through_untouched() -> None:
    bug = ValueError("a bug, not an upstream failure")
    attempt = Script(bug)
    with pytest.raises(ValueError, match="a bug") as raised:
        await call(attempt, Metrics())
    assert raised.value is bug
    assert attempt.calls == 1


async def test_a_cancelled_attempt_is_not_retried() -> None:
    started = asyncio.Event()
    calls = 0

    async def hangs() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(60)
        return "late"

    def count(_operation: str, _reason: str) -> None:
        raise AssertionError("counted a retry")

    task = asyncio.create_task(
        retry.call(
            retry.PAGER,
            hangs,
            operation="get",
            deadline=time.monotonic() + 60,
            idempotent=True,
            on_retry=count,
        )
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_the_mqtt_reconnect_wait_doubles_within_its_bounds() -> None:
    wait = retry.reconnect(0.5, 30.0)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (500, 30.0)):
        samples = [wait(attempt) for _ in range(200)]
        assert all(0.5 <= s <= ceiling for s in samples), (attempt, max(samples))
    assert len({round(wait(6), 6) for _ in range(50)}) > 1  # jittered: replicas spread out
