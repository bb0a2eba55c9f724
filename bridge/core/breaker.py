"""A circuit breaker per upstream endpoint: fail fast while it is down, probe to find it back.

closed ──(`failures` timeouts/unreachables in a row)──▶ open ──(`cooldown` s)──▶ half-open
half-open: one request goes through as a probe; success closes the circuit, failure reopens it.
While open (and while a probe is out) requests fail at once with `upstream_unavailable`, so a
dead transmitter costs each command microseconds instead of a full CoAP timeout. Requests that
were let through while closed but still wait for their turn (the transmitter takes one at a
time) are checked again with `recheck()` when their turn comes, so they too fail at once.
Only "no answer" failures count: an upstream that answers with an error is up.
"""

from __future__ import annotations

import time
from typing import Final, Literal

from bridge.errors import CircuitOpen
from bridge.ops.metrics import Metrics

State = Literal["closed", "open", "half_open"]
STATE_VALUE: Final = {"closed": 0, "open": 1, "half_open": 2}


class CircuitBreaker:
    """Guards one upstream endpoint. Call `before()`, then `success()` or `failure()`."""

    def __init__(
        self,
        upstream: str,
        metrics: Metrics,
        *,
        failures: int = 5,
        cooldown: float = 5.0,
        site: str = "default",
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._state_gauge = metrics.child(metrics.circuit_state, site, upstream)
        self._threshold = failures
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state: State = "closed"
        self._show()

    def before(self) -> None:
        """Raise CircuitOpen if the request must not be sent now (never sent: not a failure of
        the upstream, and nothing a retry could change before the cooldown ends)."""
        if self.state == "closed":
            return
        if self.state == "open":
            left = self._opened_at + self._cooldown - time.monotonic()
            if left > 0:
                raise CircuitOpen(
                    f"{self._upstream} circuit open after repeated failures; "
                    f"next attempt in {left:.1f} s"
                )
            self._move("half_open")
        if self._probing:
            raise CircuitOpen(f"{self._upstream} circuit half-open; a probe is under way")
        self._probing = True

    def recheck(self) -> None:
        """Raise CircuitOpen if the circuit opened since this request passed `before()`."""
        if self.state == "open":
            raise CircuitOpen(
                f"{self._upstream} circuit opened while this request waited; not sent"
            )

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self.state != "closed":
            self._move("closed")

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self.state == "half_open" or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            if self.state != "open":
                self._move("open")

    def release(self) -> None:
        """The request ended without telling whether the upstream is up (e.g. cancelled)."""
        self._probing = False

    def _move(self, state: State) -> None:
        self.state = state
        self._metrics.circuit_transitions.labels(self._upstream, state).inc()
        self._show()

    def _show(self) -> None:
        self._state_gauge.set(STATE_VALUE[self.state])
