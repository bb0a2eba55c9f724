"""Home Assistant MQTT discovery: what the bridge announces so HA builds its entities. Pure.

Discovery topics are Home Assistant's namespace, not the bridge's, so they are built here and not
in `bridge.topics`: `<discovery_prefix>/<component>/<node_id>/<object_id>/config`
(https://www.home-assistant.io/integrations/mqtt/#discovery-messages). Every other topic in a
payload (state, command, availability) comes from a `Topics` instance, so the topic prefix holds.

What is announced:

- the bridge (device `iotbridge_<bridge_id>`) with a connectivity binary_sensor on `bridge/state`;
- the T7470 transmitter (a device `via_device` the bridge) with the statistics as sensors, and for
  each configured pager number a `page` and a `clear` button and an `event` entity;
- when schedules are configured, a Sensaphone device with one sensor per schedule: the number of
  ranges, the ranges themselves as attributes.

Every entity but the connectivity sensor is available while `bridge/state` says online: that
sensor *is* the bridge's state, and with availability on the same topic it could never show off.

The retained config messages outlive the configuration that produced them, so on start-up the
bridge reads the ones it published before (`subscription`) and empties those that are no longer
current (`removals`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from bridge.config import Settings
from bridge.sessions import Outbound
from bridge.topics import Topics, is_publishable

EVENT_TYPES: Final = ("started", "paged", "cleared", "removed", "updated")
# Home Assistant accepts only these characters in node and object ids.
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_ENCODER: Final = msgspec.json.Encoder()
_STATE_TEMPLATE: Final = "{{ value_json.state }}"
# (field in pager/statistics, object id, name, state_class, unit, device_class, icon)
_STATISTICS: Final = (
    (
        "guestsServed",
        "guests_served",
        "Guests served",
        "total_increasing",
        None,
        None,
        "mdi:account-check",
    ),
    ("percentLate", "percent_late", "Late", "measurement", "%", None, "mdi:timer-alert"),
    ("percentOnTime", "percent_on_time", "On time", "measurement", "%", None, "mdi:timer-check"),
    (
        "averageTimeServed",
        "average_time_served",
        "Average time served",
        "measurement",
        "s",
        "duration",
        None,
    ),
    # The bridge's count of active sessions; the device's numSessions only ever grows.
    (
        "activeSessions",
        "active_sessions",
        "Active sessions",
        "measurement",
        None,
        None,
        "mdi:pager",
    ),
    (
        "numSessions",
        "sessions_started",
        "Sessions started",
        "total_increasing",
        None,
        None,
        "mdi:counter",
    ),
)


def node_id(bridge_id: str) -> str:
    """The discovery node id of one bridge installation: `iotbridge_<bridge_id>`, made safe."""
    if not bridge_id:
        raise ValueError("bridge_id must not be empty")
    return f"iotbridge_{_UNSAFE.sub('_', bridge_id)}"


def subscription(prefix: str, bridge_id: str) -> str:
    """Filter matching every discovery config this bridge may have published before."""
    return f"{prefix.strip('/')}/+/{node_id(bridge_id)}/+/config"


def discovery_messages(
    settings: Settings,
    topics: Topics,
    *,
    bridge_id: str,
    version: str,
    prefix: str = "homeassistant",
    support_url: str = "",
) -> list[Outbound]:
    """Every discovery config for this configuration: retained, compact JSON, stable order."""
    ctx = _Context(topics, node_id(bridge_id), version, prefix.strip("/"), support_url)
    out = [ctx.connectivity(), *ctx.statistics()]
    pager = settings.pager
    numbers = sorted({n for n in pager.numbers if pager.min_number <= n <= pager.max_number})
    for number in numbers:
        out.extend(ctx.pager(number))
    schedules = sorted(int(key) for key in settings.sensaphone.schedules if key.isdigit())
    out.extend(ctx.schedule(schedule_id) for schedule_id in schedules)
    return out


def removals(existing: Iterable[str], current: Iterable[Outbound]) -> list[Outbound]:
    """Empty retained configs for discovery topics published before and no longer current.

    An empty retained payload both deletes the entity in Home Assistant and clears the broker's
    retained copy. Only concrete `.../config` topics are touched, whatever `existing` holds.
    """
    keep = {message.topic for message in current}
    stale = {t for t in existing if t.endswith("/config") and is_publishable(t) and t not in keep}
    return [Outbound(topic, b"", True) for topic in sorted(stale)]


class _Context:
    """What every config of one bridge shares: topics, ids, devices, origin, availability."""

    def __init__(
        self, topics: Topics, node: str, version: str, prefix: str, support_url: str
    ) -> None:
        self.topics = topics
        self.node = node
        self.prefix = prefix
        self.origin: dict[str, str] = {"name": "iotbridge", "sw_version": version}
        if support_url:
            self.origin["support_url"] = support_url
        self.bridge_device: dict[str, Any] = {
            "identifiers": [node],
            "name": f"iotbridge {node.removeprefix('iotbridge_')}",
            "manufacturer": "iotbridge",
            "model": "MQTT bridge for LRS T7470 and Sensaphone.net",
            "sw_version": version,
        }
        self.transmitter_device = self._child("t7470", "T7470 transmitter", "LRS", "T7470")
        self.sensaphone_device = self._child(
            "sensaphone", "Sensaphone.net schedules", "Sensaphone", "Sensaphone.net"
        )
        self.availability = [
            {
                "topic": topics.bridge_state,
                "value_template": _STATE_TEMPLATE,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]

    def _child(self, suffix: str, name: str, manufacturer: str, model: str) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node}_{suffix}"],
            "name": name,
            "manufacturer": manufacturer,
            "model": model,
            "via_device": self.node,
        }

    def message(
        self,
        component: str,
        object_id: str,
        device: dict[str, Any],
        config: dict[str, Any],
        *,
        available: bool = True,
    ) -> Outbound:
        payload: dict[str, Any] = {
            "unique_id": f"{self.node}_{object_id}",
            **config,
            "device": device,
            "origin": self.origin,
        }
        if available:
            payload["availability"] = self.availability
        topic = f"{self.prefix}/{component}/{self.node}/{object_id}/config"
        return Outbound(topic, _ENCODER.encode(payload), True)

    def connectivity(self) -> Outbound:
        config = {
            "name": "Broker connection",
            "state_topic": self.topics.bridge_state,
            "value_template": _STATE_TEMPLATE,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "qos": 1,
        }
        return self.message(
            "binary_sensor", "connection", self.bridge_device, config, available=False
        )

    def statistics(self) -> list[Outbound]:
        out = []
        for field, object_id, name, state_class, unit, device_class, icon in _STATISTICS:
            config: dict[str, Any] = {
                "name": name,
                "state_topic": self.topics.statistics,
                # A field the transmitter left out renders "None": HA shows unknown, no error.
                "value_template": f"{{{{ value_json.get('{field}') }}}}",
                "state_class": state_class,
                "qos": 1,
            }
            if unit:
                config["unit_of_measurement"] = unit
            if device_class:
                config["device_class"] = device_class
            if icon:
                config["icon"] = icon
            out.append(self.message("sensor", object_id, self.transmitter_device, config))
        return out

    def pager(self, number: int) -> list[Outbound]:
        out = []
        for word, icon in (("page", "mdi:bell-ring"), ("clear", "mdi:check-circle")):
            config = {
                "name": f"Pager {number} {word}",
                "command_topic": self.topics.pager_action(number),
                # The bridge accepts a bare word as the whole command (README, Topics).
                "payload_press": word,
                "qos": 1,
                "retain": False,
                "icon": icon,
            }
            out.append(
                self.message("button", f"pager_{number}_{word}", self.transmitter_device, config)
            )
        event = {
            "name": f"Pager {number}",
            "state_topic": self.topics.pager_event(number),
            "event_types": list(EVENT_TYPES),
            # HA wants `event_type`; the bridge says `event`. The session becomes an attribute.
            "value_template": (
                "{{ {'event_type': value_json.event, 'session': value_json.session} | to_json }}"
            ),
            "qos": 1,
            "icon": "mdi:pager",
        }
        out.append(self.message("event", f"pager_{number}_event", self.transmitter_device, event))
        return out

    def schedule(self, schedule_id: int) -> Outbound:
        topic = self.topics.schedule_ranges(schedule_id)
        config = {
            "name": f"Schedule {schedule_id} ranges",
            "state_topic": topic,
            "value_template": "{{ value_json.timeranges | length }}",
            "json_attributes_topic": topic,
            "json_attributes_template": "{{ {'timeranges': value_json.timeranges} | to_json }}",
            "qos": 1,
            "icon": "mdi:calendar-clock",
        }
        object_id = f"schedule_{schedule_id}_timeranges"
        return self.message("sensor", object_id, self.sensaphone_device, config)
