"""The composition root: builds every part from the settings and runs them in one TaskGroup.

Constructors do no I/O; `Bridge.run()` starts the loops as named tasks. SIGTERM (or SIGINT) stops
intake, drains in-flight commands within `drain_timeout`, publishes `offline` and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from bridge import __version__
from bridge.coap import Transmitter
from bridge.config import Settings
from bridge.dispatch import Dispatcher
from bridge.errors import InvalidPayload
from bridge.homeassistant import HomeAssistant
from bridge.metrics import Metrics
from bridge.mqtt import MqttLink
from bridge.pager import PagerService
from bridge.probes import ProbeServer
from bridge.routing import Request, Router
from bridge.schedules import ScheduleService
from bridge.sensaphone import SensaphoneClient
from bridge.sessions import Outbound
from bridge.topics import BaseTopic, PagerTopic, ScheduleTopic, Topics

log = logging.getLogger(__name__)


class Bridge:
    """One site: one broker link, one transmitter, one Sensaphone account."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.info.info({"version": __version__})
        self.topics = Topics(settings.topic_prefix, max_number=settings.pager.max_number)
        self.link = MqttLink(
            settings.mqtt,
            self.topics,
            self.metrics,
            receive_maximum=settings.limits.max_in_flight,
        )
        self.transmitter = Transmitter(
            settings.pager.url,
            timeout=settings.pager.timeout,
            rotate_after=settings.pager.rotate_after,
        )
        self.pager = PagerService(
            self.transmitter, self._publish_all, self.topics, self.metrics, settings.pager
        )
        self.sensaphone = SensaphoneClient(
            settings.sensaphone, metrics=self.metrics.sensaphone_observer()
        )
        self.schedules = ScheduleService(
            self.sensaphone, self._publish_all, self.topics, settings.sensaphone
        )
        router = Router(self.topics, settings.pager, settings.limits)
        self.dispatcher = Dispatcher(
            router, self.link, self._execute, self.metrics, settings.limits
        )
        if settings.discovery.enabled:
            self.homeassistant = HomeAssistant(settings, self.topics, self._publish_all)
            self.link.watch(self.homeassistant.existing_filter, self.homeassistant.message)
            self.link.watch(self.homeassistant.status_topic, self.homeassistant.message)
            self.link.on_connect(self.homeassistant.connected)
        self.probes = ProbeServer(settings.http.addr, self.metrics, lambda: self.link.ready)
        self._drain_timeout = settings.limits.drain_timeout
        self._stop = asyncio.Event()

    async def _execute(self, request: Request) -> Any:
        match request.target:
            case PagerTopic(number=number):
                return await self.pager.execute(number, request.command)
            case BaseTopic():
                return await self.pager.execute_base(request.command)
            case ScheduleTopic(schedule_id=schedule_id):
                return await self.schedules.execute(schedule_id, request.command)
        raise InvalidPayload("unroutable command")  # pragma: no cover - the match is exhaustive

    async def _publish_all(self, out: list[Outbound]) -> None:
        await asyncio.gather(*(self.link.publish(o.topic, o.payload, retain=o.retain) for o in out))

    def stop(self) -> None:
        """Ask `run()` to shut down gracefully (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
        await self.probes.start()
        await self.transmitter.start()
        try:
            async with asyncio.TaskGroup() as group:
                loops = [
                    group.create_task(self.link.run(self.dispatcher.submit), name="mqtt"),
                    group.create_task(self.pager.watch(), name="pager-watch"),
                ]
                await self._stop.wait()
                log.info("stopping: draining in-flight commands")
                self.link.stop_intake()
                if not await self.dispatcher.drain(self._drain_timeout):
                    log.warning("drain timed out; unanswered commands will be redelivered")
                await self.link.close()
                for task in loops:
                    task.cancel()
        finally:
            await self.transmitter.close()
            await self.sensaphone.close()
            await self.probes.close()
            log.info("stopped")
