"""One observer of a site's transmitter across replicas: a claim held on the broker.

Replicas sharing a site (`mqtt.shared_group`) all carry out commands, but if each observed the
transmitter, every change made at the restaurant's console would be published once per replica,
and a Home Assistant automation would fire once per replica. So exactly one replica at a time
observes and publishes events; the others stand by. They agree through what every deployment
already shares, the broker, with no consensus protocol of their own:

- The holder publishes a retained claim on `<prefix>/bridge/observer`, `{"holder": <client id>}`,
  every `RENEW` seconds, with an MQTT 5 Message Expiry of `3 * RENEW` (a claim whose holder died
  without a word leaves the broker's store by itself).
- A standby that has seen no claim for `3 * RENEW` seconds claims for itself. The broker hands
  every subscriber the messages of one topic in one order, so all replicas agree on which claim
  came last: the latest claim wins, and a claimant holds once `SETTLE` seconds passed without a
  later claim. A holder that sees a later claim from another yields at once.
- A holder whose broker link has been down for `2 * RENEW` seconds yields too (it could not
  renew, so another may have taken over), and a holder that stops cleanly releases the claim
  (an empty retained message), so a standby takes over at once.

Failure modes (docs/reliability.md measures them): after a holder dies, another takes over within
`3 * RENEW + SETTLE` seconds (7 s), registers Observe and re-reads the whole list, publishing what
changed meanwhile; during a network partition two replicas may both observe for a while. Either
way the result may be a duplicate event, never a missed change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from bridge.contract.models import Claim
from bridge.errors import BridgeError

log = logging.getLogger(__name__)

RENEW: Final = 2.0
SETTLE: Final = 1.0
TICK: Final = 0.5


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder(Claim).decode

# (topic, payload, retain, expiry in seconds): what the claim publishes.
Publish = Callable[[str, bytes, bool, int | None], Awaitable[object]]


class ObserverClaim:
    """This replica's side of the claim. `holding` says whether it is the observer now."""

    def __init__(
        self,
        topic: str,
        me: str,
        publish: Publish,
        link_up: Callable[[], bool],
        *,
        renew: float = RENEW,
        settle: float = SETTLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.topic = topic
        self.me = me
        self._publish = publish
        self._link_up = link_up
        self._renew, self._settle = renew, settle
        now = clock()
        self._latest: str | None = None  # holder of the latest claim seen
        self._latest_at = now  # when any claim (or release) was last seen; start: wait a while
        self._claimed_at: float | None = None  # when we last claimed
        self._renewed_at = 0.0
        self._down_since: float | None = None
        self._changed = asyncio.Event()
        self.holding = False

    def message(self, _topic: str, payload: bytes) -> None:
        """A claim (or release) seen on the broker, ours included, in the broker's order."""
        self._latest_at = self._clock()
        if not payload:
            self._latest = None
            self._latest_at = 0.0  # released: take over at once
            return
        try:
            holder = _DECODE(payload).holder
        except msgspec.DecodeError:
            log.warning("unreadable observer claim on %s: %r", self.topic, payload[:80])
            return
        self._latest = holder
        if holder != self.me and self.holding:
            log.info("%s now observes the transmitter; %s stands by", holder, self.me)
            self._set(holding=False)

    async def run(self) -> None:
        """Claim, renew, take over and yield, for as long as the site runs."""
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._step(self._clock())
            except BridgeError as exc:
                log.warning("observer claim not published: %s", exc.message)

    async def _step(self, now: float) -> None:
        if not self._link_up():
            self._down_since = self._down_since or now
            if self.holding and now - self._down_since > 2 * self._renew:
                log.warning("%s yields the transmitter: its broker link is down", self.me)
                self._set(holding=False)
            return
        self._down_since = None
        if self.holding:
            if now - self._renewed_at >= self._renew:
                await self._claim(now)
            return
        claimed = self._claimed_at
        if claimed is not None:
            if now - claimed < self._settle:
                return
            self._claimed_at = None
            if self._latest == self.me:  # no later claim came: ours is the one
                log.info("%s observes the transmitter", self.me)
                self._set(holding=True)
        elif now - self._latest_at > 3 * self._renew:
            await self._claim(now)

    async def _claim(self, now: float) -> None:
        if not self.holding:
            self._claimed_at = now
        self._renewed_at = now
        expiry = int(3 * self._renew) + 1
        await self._publish(self.topic, _ENCODE(Claim(self.me)), True, expiry)

    async def release(self) -> None:
        """Stopping cleanly: let a standby take over now rather than after the claim expires."""
        if self.holding:
            self._set(holding=False)
            with contextlib.suppress(BridgeError):
                await self._publish(self.topic, b"", True, None)

    def _set(self, *, holding: bool) -> None:
        self.holding = holding
        self._changed.set()

    async def wait(self, *, holding: bool) -> None:
        """Until this replica holds the claim (or, with `holding=False`, has lost it)."""
        while self.holding != holding:
            self._changed.clear()
            await self._changed.wait()
