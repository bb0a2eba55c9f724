"""Background tasks that a bug or a hostile peer cannot turn into the end of the process.

A site's long-running loops (the MQTT link, following the transmitter, the observer claim) run
under `supervised()`: an exception nobody expected (a peer's reply that trips a library, a bug)
is contained at the task's boundary instead of ending the TaskGroup and with it every site in
the process. It is logged once per failure with its traceback and the task's name, counted in
`iotbridge_task_failures_total{task}`, and the task restarts after a backoff (1 s, doubling to
60 s; back to 1 s after it ran well for a minute). A task that failed three times in a row
without a good minute in between makes `/readyz` answer 503, naming it.

One-shot work that an event starts (republishing state after a reconnect, announcing to Home
Assistant) runs under `Background`: the same containment, logging and count, but no restart
with a backoff, since the event that started it comes again (the next reconnect, Home
Assistant's next birth message) and does the work anew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

FIRST_DELAY: Final = 1.0
LONGEST_DELAY: Final = 60.0
HEALTHY_AFTER: Final = 60.0
UNHEALTHY_AFTER: Final = 3


class Health:
    """Which supervised tasks keep failing (for /readyz)."""

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}

    def failed(self, name: str) -> None:
        self._failures[name] = self._failures.get(name, 0) + 1

    def healthy(self, name: str) -> None:
        self._failures.pop(name, None)

    def failing(self) -> list[str]:
        """Tasks that failed UNHEALTHY_AFTER times in a row or more."""
        return sorted(name for name, n in self._failures.items() if n >= UNHEALTHY_AFTER)


async def supervised(
    name: str,
    kind: str,
    work: Callable[[], Awaitable[None]],
    metrics: Metrics,
    health: Health,
) -> None:
    """Run `work()` until it returns or is cancelled, restarting it after unexpected failures.

    `name` identifies the task in logs and on /readyz (e.g. `pager-watch-north`); `kind` is the
    metric label, from a fixed set (`pager-watch`, `observer`, `mqtt`).
    """
    delay = FIRST_DELAY
    while True:
        started = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            health.failed(name)
            metrics.child(metrics.task_failures, kind).inc()
            log.exception("background task %s failed; restarting it in %.0f s", name, delay)
        else:
            health.healthy(name)
            return
        if time.monotonic() - started > HEALTHY_AFTER:
            delay = FIRST_DELAY
            health.healthy(name)
            health.failed(name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, LONGEST_DELAY)


class Background:
    """Starts one site's one-shot tasks and contains their unexpected failures.

    A failure is counted in `iotbridge_task_failures_total{task=<kind>}` and logged: with its
    traceback the first time for each kind of task and exception, in one line after that (an
    event that keeps coming, such as Home Assistant's birth message, must not fill the log with
    tracebacks). The task then ends quietly; it never holds an exception nobody retrieves.
    """

    def __init__(self, site: str, metrics: Metrics) -> None:
        self._site = site
        self._metrics = metrics
        self._logged: set[tuple[str, str]] = set()  # (kind, exception type) logged in full
        # asyncio keeps only a weak reference to a task: a running one must be held somewhere.
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: str, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `work()` in a task named `<kind>-<site>`; `kind` is the metric label, from a
        fixed set (`republish`, `schedule-refresh`, `announce`)."""
        name = f"{kind}-{self._site}" if self._site else kind
        task = asyncio.create_task(self._contained(name, kind, work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _contained(self, name: str, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._metrics.child(self._metrics.task_failures, kind).inc()
            key = (kind, type(exc).__name__)
            if key not in self._logged and len(self._logged) < 64:
                self._logged.add(key)
                log.exception("background task %s failed; it runs again when next due", name)
            else:
                log.warning(
                    "background task %s failed again (%s); it runs again when next due",
                    name,
                    key[1],
                )
