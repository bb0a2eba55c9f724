"""Prometheus metrics. One registry per bridge instance (tests run several in one process).

Label values come from small fixed sets only: routes, actions, outcomes (result codes),
upstream names. Never a pager number, topic, schedule id or user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

M = TypeVar("M", Counter, Gauge, Histogram)

# Each counter and histogram would otherwise export a `_created` timestamp series as well: noise
# on every dashboard (62 series in a single-site bridge), and Prometheus does not need them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

# 1 ms to 60 s: CoAP's retransmissions can run ~45 s before a request is given up.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    45.0,
    60.0,
)

PAGER_STATISTICS: Final = {
    "guestsServed": "guests_served",
    "percentLate": "percent_late",
    "percentOnTime": "percent_on_time",
    "averageTimeServed": "average_time_served_seconds",
    "numSessions": "sessions",
}


class Metrics:
    """Every metric the bridge exports. Attribute names mirror the metric names."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Labelled children by (metric, label values): `labels()` validates and locks on every
        # call, which the hot path (several per command) does not need to pay for again.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.info = Info("iotbridge", "Build information", registry=r)
        self.commands = Counter(
            "iotbridge_commands",
            "Commands handled, by route, action and outcome (ok or the result's error code)",
            ["route", "action", "outcome"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "iotbridge_command_duration_seconds",
            "End-to-end command latency: MQTT receipt to result published",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "iotbridge_upstream_request_duration_seconds",
            "Latency of requests to the upstreams, by operation and outcome",
            ["upstream", "operation", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Gauges that describe one site carry its name (a bounded set: the configured sites),
        # so with several sites each has its own series instead of the last writer winning.
        self.mqtt_connected = Gauge(
            "iotbridge_mqtt_connected",
            "1 while the site's MQTT session is up",
            ["site"],
            registry=r,
        )
        self.mqtt_reconnects = Counter(
            "iotbridge_mqtt_reconnects", "MQTT connection attempts after the first", registry=r
        )
        self.mqtt_connect_failures = Counter(
            "iotbridge_mqtt_connect_failures",
            "Failed MQTT connection attempts, by reason",
            ["reason"],
            registry=r,
        )
        self.mqtt_sessions_lost = Counter(
            "iotbridge_mqtt_sessions_lost",
            "Reconnects where the broker no longer had our session (queued commands lost)",
            registry=r,
        )
        self.mqtt_publish_refused = Counter(
            "iotbridge_mqtt_publish_refused",
            "Publishes the broker refused (PUBACK reason code 0x80 or more), by reason",
            ["reason"],
            registry=r,
        )
        self.response_topics_ignored = Counter(
            "iotbridge_response_topics_ignored",
            "MQTT 5 Response Topics not answered, by reason (not_allowed, reserved, not_a_topic)",
            ["reason"],
            registry=r,
        )
        self.task_failures = Counter(
            "iotbridge_task_failures",
            "Background work that failed unexpectedly (loops are restarted, one-shot work is "
            "done again at its next trigger), by task",
            ["task"],
            registry=r,
        )
        self.broker_dropped = Gauge(
            "iotbridge_broker_dropped_messages",
            "Messages the broker reports it dropped ($SYS/broker/publish/messages/dropped)",
            registry=r,
        )
        self.limits_reached = Counter(
            "iotbridge_limits_reached",
            "Times a bound refused or forgot something, by limit (README, Security)",
            ["limit"],
            registry=r,
        )
        self.outbound_dropped = Counter(
            "iotbridge_outbound_dropped",
            "Outbound messages not published: too many already waiting for the broker",
            registry=r,
        )
        self.in_flight = Gauge(
            "iotbridge_commands_in_flight", "Commands received and not yet answered", registry=r
        )
        self.pager_statistics = {
            field: Gauge(
                f"iotbridge_pager_{name}", f"Transmitter statistic {field}", ["site"], registry=r
            )
            for field, name in PAGER_STATISTICS.items()
        }
        self.pager_active_sessions = Gauge(
            "iotbridge_pager_active_sessions",
            "Sessions active on the transmitter, as the bridge tracks them",
            ["site"],
            registry=r,
        )
        self.pager_notifications = Counter(
            "iotbridge_pager_notifications",
            "Observe notifications from the transmitter, by kind",
            ["kind"],
            registry=r,
        )
        self.pager_watch_mode = Gauge(
            "iotbridge_pager_watch_mode",
            "How changes are followed: 1 for the active mode (observe, poll, or standby: "
            "another replica observes)",
            ["site", "mode"],
            registry=r,
        )
        self.pager_events = Counter(
            "iotbridge_pager_events", "Session events published, by event", ["event"], registry=r
        )
        self.sensaphone_logins = Counter(
            "iotbridge_sensaphone_logins",
            "Sensaphone logins, by kind (initial, renew, expired) and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "iotbridge_circuit_state",
            "Circuit breaker per upstream: 0 closed, 1 open, 2 half-open",
            ["site", "upstream"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "iotbridge_circuit_transitions",
            "Circuit breaker state changes, by upstream and new state",
            ["upstream", "state"],
            registry=r,
        )
        self.deadletters = Counter(
            "iotbridge_deadletters",
            "Commands sent to bridge/deadletter, by route and error code",
            ["route", "code"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "iotbridge_upstream_retries",
            "Retried upstream requests, by upstream, operation and reason",
            ["upstream", "operation", "reason"],
            registry=r,
        )

    def child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, created once and then looked up."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_pager_statistics(self, site: str, values: Mapping[str, float]) -> None:
        """The gauges of the statistics the transmitter reported (those that are numbers)."""
        for field, number in values.items():
            gauge = self.pager_statistics.get(field)
            if gauge is not None:
                self.child(gauge, site).set(number)

    def sensaphone_observer(self) -> SensaphoneMetrics:
        return SensaphoneMetrics(self)


class SensaphoneMetrics:
    """Receives the Sensaphone client's reports (bridge.schedules.sensaphone.SensaphoneObserver)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def request_done(self, operation: str, outcome: str, seconds: float) -> None:
        self._m.upstream_seconds.labels("sensaphone", operation, outcome).observe(seconds)

    def login(self, kind: str, ok: bool) -> None:
        self._m.sensaphone_logins.labels(kind, "ok" if ok else "failed").inc()

    def retry(self, operation: str, reason: str) -> None:
        self._m.upstream_retries.labels("sensaphone", operation, reason).inc()

    def limit_reached(self, limit: str) -> None:
        self._m.child(self._m.limits_reached, limit).inc()
