"""Home Assistant discovery: topics, payloads and removals as Home Assistant would receive them."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from bridge.config import (
    DiscoverySettings,
    ScheduleParent,
    SensaphoneSettings,
    Settings,
    per_site,
)
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound
from bridge.homeassistant import discovery
from bridge.homeassistant.announcer import SEEN_MAX, HomeAssistant

# Required options per component, from https://www.home-assistant.io/integrations/<component>.mqtt
# (plus `unique_id`, needed for an entity to belong to a device, and the device's identifiers).
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "button": {"command_topic"},
    "event": {"state_topic", "event_types"},
}
TOPIC = re.compile(
    r"(?P<prefix>.+)/(?P<component>[a-z_]+)/(?P<node>[A-Za-z0-9_-]+)/(?P<object>[A-Za-z0-9_-]+)/config"
)


def settings(numbers: list[int] | None = None, schedules: tuple[str, ...] = ("28487",)) -> Settings:
    base = Settings()
    return msgspec.structs.replace(
        base,
        pager=msgspec.structs.replace(base.pager, numbers=[66, 7] if numbers is None else numbers),
        sensaphone=SensaphoneSettings(
            schedules={s: ScheduleParent(device_id=1234) for s in schedules}
        ),
    )


def messages(prefix: str = "", ha_prefix: str = "homeassistant", **kw: Any) -> list[Outbound]:
    return discovery.discovery_messages(
        settings(**kw), Topics(prefix), bridge_id="site-1", version="0.1.0", prefix=ha_prefix
    )


def payloads(out: list[Outbound]) -> dict[str, dict[str, Any]]:
    return {m.topic: json.loads(m.payload) for m in out}


def by_object(out: list[Outbound]) -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for message in out:
        match = TOPIC.fullmatch(message.topic)
        assert match is not None, message.topic
        found[match["object"]] = (match["component"], json.loads(message.payload))
    return found


def test_topics_follow_the_discovery_layout() -> None:
    out = messages()
    for message in out:
        match = TOPIC.fullmatch(message.topic)
        assert match is not None, message.topic
        assert match["prefix"] == "homeassistant"
        assert match["node"] == "iotbridge_site-1"
        assert message.retain is True
    assert discovery.subscription("homeassistant", "site-1") == (
        "homeassistant/+/iotbridge_site-1/+/config"
    )


def test_payloads_are_compact_json() -> None:
    for message in messages():
        assert (
            message.payload
            == json.dumps(
                json.loads(message.payload), separators=(",", ":"), ensure_ascii=False
            ).encode()
        )


def test_every_payload_has_what_its_component_requires() -> None:
    found = by_object(messages())
    assert {component for component, _ in found.values()} == set(REQUIRED)
    for component, payload in found.values():
        assert REQUIRED[component] <= set(payload), (component, payload)
        assert payload["device"]["identifiers"]
        assert payload["origin"]["name"] == "iotbridge"
        assert payload["origin"]["sw_version"] == "0.1.0"
        assert payload["unique_id"]
    event_types = [p["event_types"] for c, p in found.values() if c == "event"]
    assert event_types == [["started", "paged", "cleared", "removed", "updated", "error"]] * 2


def test_unique_ids_are_unique_and_stable() -> None:
    ids = [p["unique_id"] for p in payloads(messages()).values()]
    assert len(ids) == len(set(ids))
    assert ids == [p["unique_id"] for p in payloads(messages("elsewhere")).values()]
    assert all(i.startswith("iotbridge_site-1_") for i in ids)


@pytest.mark.parametrize(("prefix", "state"), [("", "bridge/state"), ("r1", "r1/bridge/state")])
def test_availability_is_the_prefixed_bridge_state(prefix: str, state: str) -> None:
    found = by_object(messages(prefix))
    for object_id, (_, payload) in found.items():
        if object_id == "connection":
            # The connectivity sensor is the bridge state itself; it must be able to show off.
            assert "availability" not in payload
            assert payload["state_topic"] == state
            assert (payload["payload_on"], payload["payload_off"]) == ("online", "offline")
            continue
        [availability] = payload["availability"]
        assert availability["topic"] == state
        assert (availability["payload_available"], availability["payload_not_available"]) == (
            "online",
            "offline",
        )


def test_topic_prefix_applies_to_every_bridge_topic() -> None:
    for _, payload in by_object(messages("r1")).values():
        for key in ("state_topic", "command_topic", "json_attributes_topic"):
            if key in payload:
                assert payload[key].startswith("r1/"), payload[key]


def test_discovery_prefix_is_a_parameter() -> None:
    out = messages(ha_prefix="ha/")
    assert all(m.topic.startswith("ha/") and not m.topic.startswith("ha//") for m in out)


def test_devices_bridge_transmitter_pagers_and_sensaphone() -> None:
    found = by_object(messages())
    bridge = found["connection"][1]["device"]
    assert bridge["identifiers"] == ["iotbridge_site-1"]
    assert bridge["name"] == "iotbridge"
    assert "via_device" not in bridge
    transmitter = found["active_sessions"][1]["device"]
    assert transmitter["model"] == "T7470"
    assert transmitter["name"] == "T7470 transmitter"
    assert transmitter["via_device"] == "iotbridge_site-1"
    pager = found["pager_66_page"][1]["device"]
    assert pager["identifiers"] == ["iotbridge_site-1_pager_66"]
    assert pager["name"] == "Pager 66"
    assert pager["via_device"] == "iotbridge_site-1_t7470"
    for object_id in ("start", "clear", "remove", "session", "event"):
        assert found[f"pager_66_{object_id}"][1]["device"] == pager
    sensaphone = found["schedule_28487_timeranges"][1]["device"]
    assert sensaphone["name"] == "Sensaphone.net"
    assert sensaphone["via_device"] == "iotbridge_site-1"


def test_entity_names_read_well_after_their_device() -> None:
    """HA shows "<device> <entity>": "iotbridge Status", "Pager 66 Start"."""
    names = {o: p["name"] for o, (_, p) in by_object(messages()).items()}
    assert names["connection"] == "Status"
    assert names["active_sessions"] == "Active sessions"
    assert [names[f"pager_66_{w}"] for w in ("start", "page", "clear", "remove")] == [
        "Start",
        "Page",
        "Clear",
        "Remove",
    ]
    assert (names["pager_66_session"], names["pager_66_event"]) == ("Session", "Event")


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("", "", "Pager 66"),
        ("", "restaurant-1", "restaurant-1 Pager 66"),  # one installation per prefix
        ("Main Street", "restaurant-1", "Main Street Pager 66"),
    ],
)
def test_device_names_carry_the_name_or_the_prefix(name: str, prefix: str, expected: str) -> None:
    base = settings()
    configured = msgspec.structs.replace(
        base, topic_prefix=prefix, discovery=DiscoverySettings(name=name)
    )
    out = discovery.discovery_messages(
        configured, Topics(prefix), bridge_id="site-1", version="0.1.0"
    )
    devices = {p["device"]["name"] for _, p in by_object(out).values()}
    assert expected in devices
    label = f"{expected.removesuffix('Pager 66')}"
    assert f"{label}iotbridge" in devices
    assert f"{label}T7470 transmitter" in devices


def test_several_sites_never_share_a_topic_an_id_or_a_device_name() -> None:
    """With `discovery.node` set, too: each site's node and names carry the site."""
    raw = {
        "discovery": {"enabled": True, "node": "acme"},
        "sites": [
            {"name": "north", "pager": {"numbers": [66]}},
            {"name": "south", "pager": {"numbers": [66]}, "topic_prefix": "r/south"},
        ],
    }
    sites = per_site(msgspec.convert(raw, Settings))
    seen: dict[str, set[str]] = {"topics": set(), "ids": set(), "devices": set()}
    for site, each in sites:
        bridge_id = each.discovery.node
        assert bridge_id == f"acme-{site}"
        out = discovery.discovery_messages(
            each, Topics(each.topic_prefix), bridge_id=bridge_id, version="0.1.0"
        )
        found = payloads(out)
        topics = set(found)
        ids = {p["unique_id"] for p in found.values()}
        devices = {p["device"]["name"] for p in found.values()}
        assert all(f"/iotbridge_acme-{site}/" in t for t in topics)
        assert all(i.startswith(f"iotbridge_acme-{site}_") for i in ids)
        assert all(d.startswith(f"{site} ") for d in devices), devices
        for key, values in (("topics", topics), ("ids", ids), ("devices", devices)):
            assert not seen[key] & values
            seen[key] |= values


def test_a_single_site_keeps_its_ids() -> None:
    """Unique ids of a single-site installation are what they were: HA's entity ids hang on them."""
    ids = {p["unique_id"] for p in payloads(messages()).values()}
    assert {
        "iotbridge_site-1_connection",
        "iotbridge_site-1_active_sessions",
        "iotbridge_site-1_pager_66_page",
        "iotbridge_site-1_pager_66_clear",
        "iotbridge_site-1_pager_66_event",
        "iotbridge_site-1_schedule_28487_timeranges",
    } <= ids


def test_statistics_sensors() -> None:
    found = by_object(messages())
    expected = {
        "guests_served": ("total_increasing", None),
        "percent_late": ("measurement", "%"),
        "percent_on_time": ("measurement", "%"),
        "average_time_served": ("measurement", "s"),
        "active_sessions": ("measurement", None),
        "sessions_started": ("total_increasing", None),
    }
    for object_id, (state_class, unit) in expected.items():
        component, payload = found[object_id]
        assert component == "sensor"
        assert payload["state_topic"] == "pager/statistics"
        assert payload["state_class"] == state_class
        assert payload.get("unit_of_measurement") == unit
        assert "value_json" in payload["value_template"]
    assert "activeSessions" in found["active_sessions"][1]["value_template"]
    assert "numSessions" in found["sessions_started"][1]["value_template"]


@pytest.mark.parametrize("object_id", ["percent_late", "percent_on_time", "average_time_served"])
def test_shares_of_guests_served_are_unknown_until_one_was_served(object_id: str) -> None:
    """The template renders None (HA: unknown) while guestsServed is 0; the real Home
    Assistant renders it in tests/homeassistant."""
    template = by_object(messages())[object_id][1]["value_template"]
    assert "guestsServed" in template
    assert "else None" in template


def test_pager_buttons_session_and_event() -> None:
    found = by_object(messages())
    for word in ("start", "page", "clear", "remove"):
        component, payload = found[f"pager_66_{word}"]
        assert component == "button"
        assert payload["command_topic"] == "pager/66/action"
        # A bare word is a whole command; `start` takes the transmitter's default goal.
        assert payload["payload_press"] == word
        assert payload["retain"] is False
    component, session = found["pager_66_session"]
    assert component == "sensor"
    assert session["state_topic"] == session["json_attributes_topic"] == "pager/66/session"
    assert session["value_template"] == discovery.SESSION_STATE
    assert session["value_template"].startswith("{% if not value %}idle")
    for attribute in ("label", "party_size", "goal", "started", "elapsed"):
        assert f"'{attribute}'" in session["json_attributes_template"]
    component, event = found["pager_66_event"]
    assert component == "event"
    assert event["state_topic"] == "pager/66/event"
    assert "event_type=value_json.event" in event["value_template"]


def test_schedule_sensor() -> None:
    component, payload = by_object(messages())["schedule_28487_timeranges"]
    assert component == "sensor"
    assert (
        payload["state_topic"] == payload["json_attributes_topic"] == ("schedule/28487/timeranges")
    )
    assert "timeranges | length" in payload["value_template"]
    assert "json_attributes_template" in payload


def test_a_pager_number_appears_only_in_its_own_entities() -> None:
    for object_id, (_, payload) in by_object(messages(numbers=[66, 7, 660])).items():
        text = json.dumps(payload)
        for number in (66, 7, 660):
            mentions = re.findall(rf"(?<![0-9]){number}(?![0-9])", text)
            if object_id.startswith(f"pager_{number}_"):
                assert mentions
            else:
                assert not mentions, (object_id, number)


def test_invalid_and_duplicate_numbers_are_left_out() -> None:
    found = by_object(messages(numbers=[5, 5, 0, 70000]))
    assert sorted(o for o in found if o.startswith("pager_")) == [
        "pager_5_clear",
        "pager_5_event",
        "pager_5_page",
        "pager_5_remove",
        "pager_5_session",
        "pager_5_start",
    ]


def test_nothing_per_pager_or_schedule_when_none_configured() -> None:
    found = by_object(messages(numbers=[], schedules=()))
    assert set(found) == {
        "connection",
        "guests_served",
        "percent_late",
        "percent_on_time",
        "average_time_served",
        "active_sessions",
        "sessions_started",
    }


def test_removals_empty_stale_configs_only() -> None:
    before = messages(numbers=[66, 7])
    now = messages(numbers=[66])
    existing = [m.topic for m in before] + ["homeassistant/+/x/config", "homeassistant/status"]
    removed = discovery.removals(existing, now)
    assert removed == [
        Outbound(f"homeassistant/{c}/iotbridge_site-1/pager_7_{o}/config", b"", True)
        for c, o in (
            ("button", "clear"),
            ("button", "page"),
            ("button", "remove"),
            ("button", "start"),
            ("event", "event"),
            ("sensor", "session"),
        )
    ]
    assert discovery.removals([m.topic for m in now], now) == []


@pytest.mark.parametrize(
    ("bridge_id", "node"),
    [("site-1", "iotbridge_site-1"), ("a b/c+#", "iotbridge_a_b_c__"), ("x_1", "iotbridge_x_1")],
)
def test_node_id_is_safe(bridge_id: str, node: str) -> None:
    assert discovery.node_id(bridge_id) == node


def test_node_id_refuses_empty() -> None:
    with pytest.raises(ValueError, match="bridge_id"):
        discovery.node_id("")


async def _never(out: list[Outbound]) -> None:
    raise AssertionError(f"published {out}")


def test_idle_sessions_are_only_those_no_one_knows_a_session_of() -> None:
    """After an announcement, a zero-length session message goes to each announced pager that
    has no session: not to one the bridge tracks as active, nor to one retained on the broker."""
    active = {7}
    feature = HomeAssistant(settings(numbers=[5, 7, 66, 70]), Topics(), _never, lambda: active)
    feature.session("pager/66/session", b'{"number":66,"state":"started"}')
    feature.session("pager/900/session", b'{"number":900}')  # not announced: not followed
    assert feature.idle() == [
        Outbound("pager/5/session", b"", True),
        Outbound("pager/70/session", b"", True),
    ]
    feature.session("pager/66/session", b"")  # ended
    active.clear()
    assert [o.topic for o in feature.idle()] == [f"pager/{n}/session" for n in (5, 7, 66, 70)]


def test_retained_configs_remembered_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Anyone allowed to publish under the discovery prefix used to grow the set of configs
    remembered between reconnects without bound."""
    reached: list[None] = []
    feature = HomeAssistant(
        settings(numbers=[5]), Topics(), _never, limit_reached=lambda: reached.append(None)
    )
    node = discovery.node_id(feature.bridge_id)
    for n in range(SEEN_MAX + 100):
        feature.message(f"homeassistant/button/{node}/x{n}/config", b"{}")
    feature.message(f"homeassistant/button/{node}/x0/config", b"{}")  # seen: not counted again
    assert len(feature._seen) == SEEN_MAX
    assert len(reached) == 100
    warnings = [r for r in caplog.records if "retained discovery configs" in r.getMessage()]
    assert len(warnings) == 1  # once per connection, not once per config
