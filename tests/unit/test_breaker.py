"""The circuit breaker on a fake clock: it opens, fails fast, lets one probe through after the
cooldown and closes or reopens on what the probe finds, and the state gauge follows each move.

The same breaker in front of a transmitter that stops answering is in tests/faults.
"""

from __future__ import annotations

import pytest

from bridge.core import breaker as breaker_module
from bridge.core.breaker import CircuitBreaker
from bridge.errors import CircuitOpen
from bridge.ops.metrics import Metrics

FAILURES = 3
COOLDOWN = 5.0


class Clock:
    """`time.monotonic` for the breaker, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker_module, "time", fake)
    return fake


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def breaker(clock: Clock, metrics: Metrics) -> CircuitBreaker:
    """A breaker on the fake clock (`clock` patched in first)."""
    return CircuitBreaker("pager", metrics, failures=FAILURES, cooldown=COOLDOWN, site="restaurant")


def gauge(metrics: Metrics) -> float | None:
    labels = {"site": "restaurant", "upstream": "pager"}
    return metrics.registry.get_sample_value("iotbridge_circuit_state", labels)


def transitions(metrics: Metrics, state: str) -> float:
    labels = {"upstream": "pager", "state": state}
    found = metrics.registry.get_sample_value("iotbridge_circuit_transitions_total", labels)
    return found or 0.0


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state, read afresh (mypy would narrow `breaker.state` across calls)."""
    return breaker.state


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before()
        breaker.failure()


def open_circuit(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES)
    assert state(breaker) == "open"


def test_starts_closed_and_shown_as_closed(breaker: CircuitBreaker, metrics: Metrics) -> None:
    assert state(breaker) == "closed"
    assert gauge(metrics) == 0
    breaker.before()
    breaker.recheck()


def test_opens_after_failures_in_a_row(breaker: CircuitBreaker, metrics: Metrics) -> None:
    fail(breaker, FAILURES - 1)
    assert state(breaker) == "closed"
    breaker.before()
    breaker.success()  # an answer starts the count again
    fail(breaker, FAILURES - 1)
    assert state(breaker) == "closed"
    assert gauge(metrics) == 0
    fail(breaker, 1)
    assert state(breaker) == "open"
    assert gauge(metrics) == 1
    assert transitions(metrics, "open") == 1


def probe(breaker: CircuitBreaker, clock: Clock) -> None:
    """Open the circuit, let its cooldown pass, and send the one probe it lets through."""
    open_circuit(breaker)
    clock.now += COOLDOWN
    breaker.before()


def test_fails_fast_while_open(breaker: CircuitBreaker, clock: Clock) -> None:
    open_circuit(breaker)
    with pytest.raises(CircuitOpen, match=r"circuit open .*next attempt in 5\.0 s") as raised:
        breaker.before()
    assert raised.value.code == "upstream_unavailable"
    clock.now += COOLDOWN - 0.5
    with pytest.raises(CircuitOpen, match=r"next attempt in 0\.5 s"):
        breaker.before()
    # A request let through before the circuit opened is refused when its turn comes.
    with pytest.raises(CircuitOpen, match="opened while this request waited"):
        breaker.recheck()
    assert state(breaker) == "open"


def test_one_probe_after_the_cooldown(
    breaker: CircuitBreaker, clock: Clock, metrics: Metrics
) -> None:
    probe(breaker, clock)
    assert state(breaker) == "half_open"
    assert gauge(metrics) == 2
    breaker.recheck()  # the probe itself is not refused when its turn comes
    for _ in range(3):
        with pytest.raises(CircuitOpen, match="half-open; a probe is under way"):
            breaker.before()
    assert transitions(metrics, "half_open") == 1


def test_a_successful_probe_closes_the_circuit(
    breaker: CircuitBreaker, clock: Clock, metrics: Metrics
) -> None:
    probe(breaker, clock)
    breaker.success()
    assert state(breaker) == "closed"
    assert gauge(metrics) == 0
    assert transitions(metrics, "closed") == 1
    for _ in range(FAILURES + 1):  # no limit on requests once closed
        breaker.before()
    # The count started again: it takes FAILURES new failures to open it.
    fail(breaker, FAILURES - 1)
    assert state(breaker) == "closed"


def test_a_failed_probe_reopens_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock, metrics: Metrics
) -> None:
    probe(breaker, clock)
    breaker.failure()  # one failure is enough while half-open
    assert state(breaker) == "open"
    assert gauge(metrics) == 1
    assert transitions(metrics, "open") == 2
    clock.now += COOLDOWN - 0.1  # the cooldown counts from the failed probe
    with pytest.raises(CircuitOpen, match="circuit open"):
        breaker.before()
    clock.now += 0.1
    breaker.before()
    assert state(breaker) == "half_open"
    assert gauge(metrics) == 2


def test_a_released_probe_lets_the_next_request_probe(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    """A probe that ended without an answer either way (cancelled) neither closes nor
    reopens the circuit, and does not block the next probe."""
    probe(breaker, clock)
    breaker.release()
    assert state(breaker) == "half_open"
    breaker.before()  # the next probe
    with pytest.raises(CircuitOpen, match="probe is under way"):
        breaker.before()
