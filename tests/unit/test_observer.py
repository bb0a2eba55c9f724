"""The observer claim's rules, driven by hand: the latest claim wins, a holder yields to a later
one, renews while it holds, and lets go when its link has been down too long."""

from __future__ import annotations

from bridge.pager.observer import ObserverClaim

TOPIC = "bridge/observer"
START = 1_000_000.0


class Broker:
    """Delivers every claim to every replica in one order, as a broker does for one topic."""

    def __init__(self) -> None:
        self.replicas: list[ObserverClaim] = []
        self.up = True
        self.now = START
        self.queued: list[bytes] = []
        self.published: list[bytes] = []

    def clock(self) -> float:
        return self.now

    async def publish(self, _topic: str, payload: bytes, _retain: bool, _exp: int | None) -> None:
        self.published.append(payload)
        self.queued.append(payload)

    def deliver(self) -> None:
        for payload in self.queued:
            for replica in self.replicas:
                replica.message(TOPIC, payload)
        self.queued.clear()

    async def at(self, when: float, *replicas: ObserverClaim) -> None:
        """Each replica takes a step at `when`, before any of them hears the others."""
        self.now = START + when
        for replica in replicas:
            await replica._step(self.now)
        self.deliver()

    def claim(self, name: str) -> ObserverClaim:
        replica = ObserverClaim(
            TOPIC, name, self.publish, lambda: self.up, renew=2.0, settle=1.0, clock=self.clock
        )
        self.replicas.append(replica)
        return replica


async def test_simultaneous_claims_the_latest_wins_and_the_other_stands_by() -> None:
    broker = Broker()
    a, b = broker.claim("a"), broker.claim("b")
    await broker.at(7, a, b)  # nobody claimed for 6 s: both claim; b's comes last
    await broker.at(8.5, a, b)
    assert (a.holding, b.holding) == (False, True)
    await broker.at(10, a, b)  # b renews; a, hearing it, does not claim
    assert broker.published[-1] == b'{"holder":"b"}'
    assert (a.holding, b.holding) == (False, True)


async def test_a_holder_yields_to_a_later_claim() -> None:
    broker = Broker()
    a = broker.claim("a")
    await broker.at(7, a)
    await broker.at(8.5, a)
    assert a.holding
    a.message(TOPIC, b'{"holder":"c"}')  # c took over (it could not hear a for a while)
    assert not a.holding


async def test_a_holder_whose_link_is_down_lets_go_and_a_release_frees_at_once() -> None:
    broker = Broker()
    a, b = broker.claim("a"), broker.claim("b")
    await broker.at(7, a)
    await broker.at(8.5, a, b)
    assert a.holding
    broker.up = False
    await broker.at(9, a)
    await broker.at(13.5, a)  # down for 4.5 s > 2 renewals
    assert not a.holding
    broker.up = True
    await broker.publish(TOPIC, b"", True, None)  # a release: no need to wait for expiry
    broker.deliver()
    await broker.at(14, b)
    await broker.at(15.5, b)
    assert b.holding
