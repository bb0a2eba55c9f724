"""One site: a broker session, a transmitter, a Sensaphone account, their features and dispatch.

A single-site bridge is one `Site`; a multi-site process runs several side by side, each with its
own MQTT session (client id), in-flight limit and circuit breakers, so a slow or dead transmitter
only ever holds up its own site. Constructing a site does no I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.coap.client import Transmitter
from bridge.config import Settings
from bridge.contract import commands, models
from bridge.contract.topics import PagerTopic, ResponseTopics, Topics
from bridge.core import retry
from bridge.core.breaker import CircuitBreaker
from bridge.core.dispatch import Dispatcher
from bridge.core.outbox import Outbound, Outbox, Publish, publisher
from bridge.core.routing import Request, Router
from bridge.core.supervise import Background, Health, supervised
from bridge.errors import BridgeError
from bridge.homeassistant.announcer import HomeAssistant
from bridge.mqtt.link import MqttLink
from bridge.ops.metrics import Metrics
from bridge.pager.observer import ObserverClaim
from bridge.pager.service import PagerService
from bridge.schedules.sensaphone import SensaphoneClient
from bridge.schedules.service import ScheduleService

log = logging.getLogger(__name__)

# Carries out one kind of command: (its topic, the command, its outbox) -> the result's `data`.
Executor = Callable[[Any, models.Command, Outbox], Awaitable[Any]]


class Site:
    """Everything that serves one topic prefix."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        metrics: Metrics,
        reserved: Callable[[str], bool] | None = None,
    ) -> None:
        """`reserved(topic)`: the topic lies in a namespace some site of the process serves or
        announces (by default this site's own and its discovery prefix)."""
        self.name = name
        self.settings = settings
        self._metrics = metrics
        pager = settings.pager
        self.topics = Topics(
            settings.topic_prefix, min_number=pager.min_number, max_number=pager.max_number
        )
        self.link = MqttLink(
            settings.mqtt,
            self.topics.channels(settings.mqtt.shared_group),
            metrics,
            receive_maximum=settings.limits.max_in_flight,
            max_payload=settings.limits.max_payload,
            inbox_limit=settings.limits.max_queued,
            site=name,
            reconnect_wait=retry.reconnect(
                settings.mqtt.reconnect_min, settings.mqtt.reconnect_max
            ),
        )
        # Start publishing a list, in order, now; await the result for every PUBACK.
        self.publish_all: Publish = publisher(self.link)
        self.transmitter = Transmitter(
            settings.pager.url,
            timeout=settings.pager.timeout,
            rotate_after=settings.pager.rotate_after,
        )
        # Replicas sharing the site's commands agree on one observer of the transmitter.
        self.claim: ObserverClaim | None = None
        if settings.mqtt.shared_group:
            self.claim = ObserverClaim(
                self.topics.observer, self.link.client_id, self._publish_claim, self._link_up
            )
        self.pager = PagerService(
            self.transmitter,
            self.publish_all,
            self.topics,
            metrics,
            settings.pager,
            site=name,
            claim=self.claim,
        )
        # Followers of the retained sessions: a standby replica, and Home Assistant's feature.
        self._session_watchers: list[Callable[[str, bytes], None]] = []
        if self.claim is not None:
            self.link.watch(self.topics.observer, self.claim.message)
            self._session_watchers.append(self.pager.learn)
        self.sensaphone = SensaphoneClient(
            settings.sensaphone,
            metrics=metrics.sensaphone_observer(),
            breaker=CircuitBreaker(
                "sensaphone",
                metrics,
                failures=settings.sensaphone.breaker_failures,
                cooldown=settings.sensaphone.breaker_cooldown,
                site=name,
            ),
        )
        self.schedules = ScheduleService(
            self.sensaphone, self.publish_all, self.topics, settings.sensaphone
        )
        self._by_route = self._executors()
        router = Router(self.topics, settings.pager, settings.limits)
        responses = ResponseTopics(settings.mqtt.response_topics, reserved or self.reserves)
        self.dispatcher = Dispatcher(
            router, self.link, self._execute, metrics, settings.limits, responses, self._failed
        )
        # One-shot work after each (re)connect and Home Assistant's birth: contained, counted.
        self.background = Background(name, metrics)
        self.link.on_connect(self._connected)
        self.homeassistant: HomeAssistant | None = None
        if settings.discovery.enabled:
            self.homeassistant = HomeAssistant(
                settings,
                self.topics,
                self.publish_all,
                self.pager.tracker.active.keys,
                limit_reached=metrics.child(metrics.limits_reached, "discovery_seen").inc,
                background=self.background,
            )
            self.link.watch(self.homeassistant.existing_filter, self.homeassistant.message)
            self.link.watch(self.homeassistant.status_topic, self.homeassistant.message)
            self.link.on_connect(self.homeassistant.connected)
            if self.homeassistant.numbers:
                self._session_watchers.append(self.homeassistant.session)
        if self._session_watchers:
            self.link.watch(self.topics.pager_sessions, self._session)

    def _session(self, topic: str, payload: bytes) -> None:
        for watcher in self._session_watchers:
            watcher(topic, payload)

    def reserves(self, topic: str) -> bool:
        """`topic` lies in this site's namespace or under its discovery prefix."""
        prefix = self.settings.discovery.prefix
        return self.topics.in_namespace(topic) or topic.startswith(f"{prefix}/")

    def _executors(self) -> dict[str, Executor]:
        """One executor per kind of command topic in the command table, bound here, where
        the features are; the site refuses to exist without one for every kind."""
        executors: dict[str, Executor] = {
            commands.PAGER.route: lambda target, command, box: self.pager.execute(
                target.number, command, box
            ),
            commands.BASE.route: lambda _target, command, box: self.pager.execute_base(
                command, box
            ),
            commands.SCHEDULE.route: lambda target, command, box: self.schedules.execute(
                target.schedule_id, command, box
            ),
        }
        missing = {kind.route for kind in commands.COMMANDS} - executors.keys()
        if missing:  # pragma: no cover - a new kind in the table without its executor
            raise RuntimeError(f"no executor for the command kinds {sorted(missing)}")
        return executors

    async def _execute(self, request: Request, box: Outbox) -> Any:
        return await self._by_route[request.kind.route](request.target, request.command, box)

    def _failed(self, topic: str, action: str | None, error: models.ErrorInfo) -> list[Outbound]:
        """A command on a pager failed, carried out or refused: an `error` event on the pager's
        event topic says so, ahead of the result, for whoever follows the pager (Home
        Assistant's event entity). Nothing for other topics, nor for a topic that names no
        pager this site serves."""
        try:
            target = self.topics.parse(topic)
        except BridgeError:
            return []
        if not isinstance(target, PagerTopic):
            return []
        # Code and message: what an automation tests and a dashboard shows; the detail stays
        # on the result.
        summary = models.ErrorInfo(code=error.code, message=error.message)
        event = models.Event(event="error", number=target.number, action=action, error=summary)
        return [
            Outbound(self.topics.pager_event(target.number), models.ENCODER.encode(event), False)
        ]

    async def _connected(self) -> None:
        # In tasks: the message loop must start at once, however much state there is. Two of
        # them, so that one failing cannot hold back the other; the next reconnect does both
        # again.
        self.background.start("republish", self._republish)
        self.background.start("schedule-refresh", self.schedules.refresh)

    async def _republish(self) -> None:
        try:
            await self.publish_all(self.pager.tracker.retained())
        except BridgeError as exc:
            log.warning("retained state not republished after reconnect: %s", exc.message)

    def _publish_claim(
        self, topic: str, payload: bytes, retain: bool, expiry: int | None
    ) -> Awaitable[object]:
        return self.link.publish_soon(topic, payload, retain=retain, expiry=expiry)

    def _link_up(self) -> bool:
        return self.link.ready

    def start_loops(self, group: asyncio.TaskGroup, health: Health) -> list[asyncio.Task[None]]:
        """The site's loops, each supervised: a failure no one expected restarts that loop,
        never the process (bridge.core.supervise)."""
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("mqtt", lambda: self.link.run(self.dispatcher.submit, self.dispatcher.shed)),
            ("pager-watch", self.pager.watch),
        ]
        if self.claim is not None:
            loops.append(("observer", self.claim.run))
        return [
            group.create_task(
                supervised(f"{kind}-{self.name}", kind, work, self._metrics, health),
                name=f"{kind}-{self.name}",
            )
            for kind, work in loops
        ]

    async def drain(self) -> bool:
        """Stop taking commands and let those in flight finish; False if the deadline passed.
        The observer claim is released first, so a standby takes over at once."""
        self.link.stop_intake()
        if self.claim is not None:
            await self.claim.release()
        return await self.dispatcher.drain(self.settings.limits.drain_timeout)

    async def close(self) -> None:
        await self.transmitter.close()
        await self.sensaphone.close()
