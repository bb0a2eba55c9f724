"""Home Assistant discovery at run time: announce on connect and on HA's birth, retire leftovers.

The payloads are built by `bridge.homeassistant.discovery` (pure). This feature decides when to
publish them:
after every (re)connect, once the retained configs published earlier have had a moment to arrive
(those no longer in the configuration are emptied, so HA removes their entities), and whenever
Home Assistant announces `online` on `<prefix>/status` (it has restarted and forgotten them).

A pager's Session sensor reads idle from a zero-length message on `pager/<number>/session`, and a
retained message cannot be zero-length: a pager that has had no session since Home Assistant
subscribed would read unknown. So after each announcement the feature publishes a zero-length
message there for every announced pager with no session: none that the bridge tracks as active
(`active`), none retained on the broker (it follows `pager/+/session`). Home Assistant sends its
birth message only once its discovery and subscriptions have settled; after the bridge's own
announcement it is given `IDLE_DELAY` to subscribe to new entities' topics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from bridge import __version__
from bridge.config import Settings, client_id_or_default
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound, Publish
from bridge.core.supervise import Background
from bridge.errors import BridgeError
from bridge.homeassistant import discovery
from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

# Retained messages arrive right after SUBACK; this is how long to collect them.
SETTLE = 0.5
# From an announcement to the idle sessions: Home Assistant's own discovery cool-down (its MQTT
# client waits this long for discovery and subscriptions to settle before its birth message).
IDLE_DELAY = 5.0
# Retained discovery configs remembered between reconnects (to retire the stale ones). Anyone
# allowed to publish under the discovery prefix could otherwise grow the set without bound.
SEEN_MAX = 4096


class HomeAssistant:
    """Keeps Home Assistant's view of the bridge's devices and entities current."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        publish: Publish,
        active: Callable[[], Collection[int]] = tuple,
        limit_reached: Callable[[], None] = lambda: None,
        background: Background | None = None,
    ) -> None:
        """`active()`: the pager numbers the bridge tracks as having a session now;
        `limit_reached()` counts a retained config not remembered (past `SEEN_MAX`);
        `background` runs each announcement, so that a failure nobody expected is logged and
        counted, and the next reconnect or birth message announces again."""
        self._limit_reached = limit_reached
        self._background = background or Background("", Metrics())
        self._settings = settings
        self._topics = topics
        self._publish = publish
        self._active = active
        self.prefix = settings.discovery.prefix
        self.bridge_id = settings.discovery.node or client_id_or_default(settings.mqtt)
        self.existing_filter = discovery.subscription(self.prefix, self.bridge_id)
        self.status_topic = f"{self.prefix}/status"
        self.numbers = discovery.pager_numbers(settings)
        self._announced = frozenset(self.numbers)
        self._seen: set[str] = set()
        self._overflow_said = False
        # Announced pagers whose session is retained on the broker (bounded by `numbers`).
        self._sessions: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._retiring = False

    def current(self) -> list[Outbound]:
        return discovery.discovery_messages(
            self._settings,
            self._topics,
            bridge_id=self.bridge_id,
            version=__version__,
            prefix=self.prefix,
        )

    async def connected(self) -> None:
        """After a (re)connect: collect what is retained, then announce."""
        self._seen.clear()
        self._overflow_said = False
        self._sessions.clear()
        self._schedule(SETTLE, retire=True)

    def message(self, topic: str, payload: bytes) -> None:
        """A message on one of this feature's subscriptions."""
        if topic == self.status_topic:
            if payload.strip() == b"online":
                self._schedule(SETTLE, retire=False)
        elif payload and topic not in self._seen:
            if len(self._seen) < SEEN_MAX:
                self._seen.add(topic)
                return
            self._limit_reached()
            if not self._overflow_said:
                self._overflow_said = True
                log.warning(
                    "more than %d retained discovery configs under %s: the others are not "
                    "checked, and stale ones among them not retired",
                    SEEN_MAX,
                    self.existing_filter,
                )

    def session(self, topic: str, payload: bytes) -> None:
        """A message on `pager/<number>/session`: whether that pager has a session."""
        number = self._topics.session_number(topic)
        if number is None or number not in self._announced:
            return
        if payload:
            self._sessions.add(number)
        else:
            self._sessions.discard(number)

    def idle(self) -> list[Outbound]:
        """Zero-length session messages for the announced pagers that have no session."""
        busy = self._sessions | set(self._active())
        return [
            Outbound(self._topics.pager_session(number), b"", True)
            for number in self.numbers
            if number not in busy
        ]

    def _schedule(self, delay: float, *, retire: bool) -> None:
        if self._task is not None and not self._task.done():
            retire = retire or self._retiring
            self._task.cancel()
        self._retiring = retire
        self._task = self._background.start(
            "announce", lambda: self._announce(delay, retire=retire)
        )

    async def _announce(self, delay: float, *, retire: bool) -> None:
        await asyncio.sleep(delay)
        messages = self.current()
        if retire:
            messages += discovery.removals(self._seen, messages)
        try:
            await self._publish(messages)
            await asyncio.sleep(IDLE_DELAY)
            await self._publish(self.idle())
        except BridgeError as exc:
            log.warning("Home Assistant discovery not published: %s", exc.message)
