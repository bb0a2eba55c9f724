"""Home Assistant MQTT discovery: what the bridge announces so HA builds its entities. Pure.

Discovery topics are Home Assistant's namespace, not the bridge's, so they are built here and not
in `bridge.contract.topics`: `<discovery_prefix>/<component>/<node_id>/<object_id>/config`
(https://www.home-assistant.io/integrations/mqtt/#discovery-messages). Every other topic in a
payload (state, command, availability) comes from a `Topics` instance, so the topic prefix holds.

What is announced (device names after `discovery.name`, the site's name with several sites):

- the bridge (device "iotbridge", `iotbridge_<bridge_id>`) with a connectivity binary_sensor
  "Status" on `bridge/state`;
- the T7470 transmitter ("T7470 transmitter", `via_device` the bridge) with the statistics as
  sensors;
- each configured pager ("Pager 66", `via_device` the transmitter) with Start, Page, Clear and
  Remove buttons, a Session sensor (idle, started or paged, with the session's label, party
  size, goal, start time and elapsed time as attributes) and an Event entity (started, paged,
  cleared, removed, updated, and error when a command on the pager failed);
- when schedules are configured, a Sensaphone.net device with one sensor per schedule: the
  number of ranges, the ranges themselves as attributes.

Unique ids are `<node>_<object_id>` and the node is `iotbridge_<bridge_id>`; with several sites
the bridge id carries the site (`bridge.config.per_site`), so sites never share an id or topic.

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
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound
from bridge.mqtt.names import is_publishable

EVENT_TYPES: Final = ("started", "paged", "cleared", "removed", "updated", "error")
# Home Assistant accepts only these characters in node and object ids.
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_ENCODER: Final = msgspec.json.Encoder()
# `bridge/state`; emptied by hand (a zero-length retained message), it reads offline.
_STATE_TEMPLATE: Final = "{{ value_json.state if value else 'offline' }}"
# Templates are rendered by Home Assistant (Jinja) on each message. A template that renders
# `None` makes a sensor unknown.
#
# A zero-length session message means no session: the pager is idle. The device's fields may be
# numbers or text; `state` is passed on as it came.
SESSION_STATE: Final = (
    "{% if not value %}idle"
    "{% elif value_json is mapping and value_json.state is defined %}{{ value_json.state }}"
    "{% else %}None{% endif %}"
)
# `elapsed`: seconds from the session's start to this message (the latest change). The device
# writes local time without a zone: read in Home Assistant's time zone.
SESSION_ATTRIBUTES: Final = (
    "{% if value and value_json is mapping %}{% set s = value_json %}"
    "{% set t = as_datetime(s.started, None) if s.started is defined else None %}"
    "{{ {'label': s.get('label'), 'party_size': s.get('partySize'),"
    " 'goal': s.get('goalInSeconds'), 'started': s.get('started'),"
    " 'elapsed': (now() - as_local(t)).total_seconds() | round(0) | int if t else None}"
    " | to_json }}{% else %}{}{% endif %}"
)
# HA wants `event_type`; the bridge says `event`. The rest (session, action, error) becomes
# the event's attributes.
EVENT_TEMPLATE: Final = "{{ dict(value_json, event_type=value_json.event) | to_json }}"
_SERVED: Final = "{% set served = value_json.get('guestsServed') %}"


def _statistic(field: str, *, needs_guests: bool = False) -> str:
    """A field of pager/statistics; a field the transmitter left out renders None: unknown.
    A share or average of guests served is unknown, not 0, until one has been served."""
    if not needs_guests:
        return f"{{{{ value_json.get('{field}') }}}}"
    return (
        f"{_SERVED}{{{{ value_json.get('{field}')"
        " if served is none or served | float(0) > 0 else None }}"
    )


# (field in pager/statistics, object id, name, state_class, unit, icon); seconds are durations.
_STATISTICS: Final = (
    ("guestsServed", "guests_served", "Guests served", "total_increasing", "", "mdi:account-check"),
    ("percentLate", "percent_late", "Late", "measurement", "%", "mdi:timer-alert"),
    ("percentOnTime", "percent_on_time", "On time", "measurement", "%", "mdi:timer-check"),
    ("averageTimeServed", "average_time_served", "Average time served", "measurement", "s", ""),
    # The bridge's count of active sessions; the device's numSessions only ever grows.
    ("activeSessions", "active_sessions", "Active sessions", "measurement", "", "mdi:pager"),
    ("numSessions", "sessions_started", "Sessions started", "total_increasing", "", "mdi:counter"),
)
_NEEDS_GUESTS: Final = frozenset({"percentLate", "percentOnTime", "averageTimeServed"})
# (command word, button name, icon): each a bare word the bridge accepts as the whole command.
_BUTTONS: Final = (
    ("start", "Start", "mdi:play-circle"),
    ("page", "Page", "mdi:bell-ring"),
    ("clear", "Clear", "mdi:check-circle"),
    ("remove", "Remove", "mdi:close-circle"),
)


def node_id(bridge_id: str) -> str:
    """The discovery node id of one bridge installation: `iotbridge_<bridge_id>`, made safe."""
    if not bridge_id:
        raise ValueError("bridge_id must not be empty")
    return f"iotbridge_{_UNSAFE.sub('_', bridge_id)}"


def subscription(prefix: str, bridge_id: str) -> str:
    """Filter matching every discovery config this bridge may have published before."""
    return f"{prefix.strip('/')}/+/{node_id(bridge_id)}/+/config"


def pager_numbers(settings: Settings) -> list[int]:
    """The pagers announced: `pager.numbers` within the site's range, each once, in order."""
    pager = settings.pager
    return sorted({n for n in pager.numbers if pager.min_number <= n <= pager.max_number})


def device_label(settings: Settings) -> str:
    """What comes before every device name: `discovery.name`, else the topic prefix."""
    return settings.discovery.name.strip() or settings.topic_prefix.strip("/")


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
    node = node_id(bridge_id)
    ctx = _Context(topics, node, version, prefix.strip("/"), support_url, device_label(settings))
    out = [ctx.connectivity(), *ctx.statistics()]
    for number in pager_numbers(settings):
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
        self, topics: Topics, node: str, version: str, prefix: str, support_url: str, label: str
    ) -> None:
        self.topics = topics
        self.node = node
        self.prefix = prefix
        self.label = label
        self.origin: dict[str, str] = {"name": "iotbridge", "sw_version": version}
        if support_url:
            self.origin["support_url"] = support_url
        self.availability = [
            {
                "topic": topics.bridge_state,
                "value_template": _STATE_TEMPLATE,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        self.bridge_device: dict[str, Any] = {
            "identifiers": [node],
            "name": self._named("iotbridge"),
            "manufacturer": "iotbridge",
            "model": "MQTT bridge for LRS T7470 and Sensaphone.net",
            "sw_version": version,
        }
        self.transmitter_device = self._child("t7470", "T7470 transmitter", "LRS", "T7470")
        self.sensaphone_device = self._child(
            "sensaphone", "Sensaphone.net", "Sensaphone", "Sensaphone.net"
        )

    def _named(self, name: str) -> str:
        return f"{self.label} {name}" if self.label else name

    def _child(
        self, suffix: str, name: str, manufacturer: str, model: str, via: str = ""
    ) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node}_{suffix}"],
            "name": self._named(name),
            "manufacturer": manufacturer,
            "model": model,
            "via_device": via or self.node,
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
            # Whether the bridge is up and connected: its own retained state and last will.
            "name": "Status",
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
        for field, object_id, name, state_class, unit, icon in _STATISTICS:
            config: dict[str, Any] = {
                "name": name,
                "state_topic": self.topics.statistics,
                "value_template": _statistic(field, needs_guests=field in _NEEDS_GUESTS),
                "state_class": state_class,
                "qos": 1,
            }
            if unit:
                config["unit_of_measurement"] = unit
            if unit == "s":
                config["device_class"] = "duration"
            if icon:
                config["icon"] = icon
            out.append(self.message("sensor", object_id, self.transmitter_device, config))
        return out

    def pager(self, number: int) -> list[Outbound]:
        device = self._child(
            f"pager_{number}", f"Pager {number}", "LRS", "Guest pager", f"{self.node}_t7470"
        )
        out = []
        for word, name, icon in _BUTTONS:
            config = {
                "name": name,
                "command_topic": self.topics.pager_action(number),
                # The bridge accepts a bare word as the whole command (README, Topics); `start`
                # leaves goal and party size to the transmitter's own defaults.
                "payload_press": word,
                "qos": 1,
                "retain": False,
                "icon": icon,
            }
            out.append(self.message("button", f"pager_{number}_{word}", device, config))
        session_topic = self.topics.pager_session(number)
        session = {
            "name": "Session",
            "state_topic": session_topic,
            "value_template": SESSION_STATE,
            "json_attributes_topic": session_topic,
            "json_attributes_template": SESSION_ATTRIBUTES,
            "qos": 1,
            "icon": "mdi:account-clock",
        }
        out.append(self.message("sensor", f"pager_{number}_session", device, session))
        event = {
            "name": "Event",
            "state_topic": self.topics.pager_event(number),
            "event_types": list(EVENT_TYPES),
            "value_template": EVENT_TEMPLATE,
            "qos": 1,
            "icon": "mdi:pager",
        }
        out.append(self.message("event", f"pager_{number}_event", device, event))
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
