"""The composition root: builds every site from the settings and runs them in one TaskGroup.

Constructors do no I/O; `Bridge.run()` starts the loops as named tasks. SIGTERM (or SIGINT) stops
intake, drains in-flight commands within `limits.drain_timeout`, publishes `offline` and
disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bridge import __version__
from bridge.config import Settings, per_site
from bridge.core.supervise import Health
from bridge.ops.metrics import Metrics
from bridge.ops.probes import ProbeServer
from bridge.site import Site

log = logging.getLogger(__name__)


class Bridge:
    """One process: the metrics and probes, and one `Site` per configured site."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.info.info({"version": __version__})
        self.sites = [
            Site(name, each, self.metrics, self.reserves) for name, each in per_site(settings)
        ]
        self.health = Health()
        self.probes = ProbeServer(settings.http.addr, self.metrics, self.not_ready)
        self._stop = asyncio.Event()

    def reserves(self, topic: str) -> bool:
        """`topic` lies in a namespace some site serves or announces: no Response Topic may."""
        return any(site.reserves(topic) for site in self.sites)

    @property
    def ready(self) -> bool:
        """Every site's MQTT session is up with its subscriptions granted, and no background
        task keeps failing."""
        return self.not_ready() is None

    def not_ready(self) -> str | None:
        """Why the bridge is not ready (for /readyz), or None."""
        down = [site.name for site in self.sites if not site.link.ready]
        if down:
            return f"MQTT session not up: {', '.join(down)}"
        failing = self.health.failing()
        if failing:
            return f"background task failing: {', '.join(failing)}"
        return None

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
        try:
            for site in self.sites:
                await site.transmitter.start()
            async with asyncio.TaskGroup() as group:
                loops = [
                    task for site in self.sites for task in site.start_loops(group, self.health)
                ]
                await self._stop.wait()
                log.info("stopping: draining in-flight commands")
                drained = await asyncio.gather(*(site.drain() for site in self.sites))
                if not all(drained):
                    log.warning("drain timed out; unanswered commands will be redelivered")
                await asyncio.gather(*(site.link.close() for site in self.sites))
                for task in loops:
                    task.cancel()
        finally:
            for site in self.sites:
                await site.close()
            await self.probes.close()
            log.info("stopped")
