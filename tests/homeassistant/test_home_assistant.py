"""The bridge as a real Home Assistant sees it: devices, entities and names for one site and for
two; a pager driven from HA's buttons and from an automation, with the session sensor and the
event entity following; a refused press shown in HA; availability on SIGTERM and SIGKILL; the
re-announcement when HA comes back.

One module, so that a machine without Python 3.13+ skips the whole tier in one line.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.pager.server import PagerSimulator
from tests.homeassistant import server
from tests.homeassistant.client import HomeAssistant, State
from tests.homeassistant.conftest import (
    BridgeFactory,
    clear_retained,
    until_no_mqtt_entities,
    until_ready,
)
from tests.support import Peer, started_sim

if server.search() is None:
    pytest.skip(server.describe_missing_python(), allow_module_level=True)

pytestmark = pytest.mark.homeassistant

NODE = "iotbridge_iotbridge-ha"
SESSION = "sensor.pager_66_session"
EVENT = "event.pager_66_event"
STATUS = "binary_sensor.iotbridge_status"
T7470 = "T7470 transmitter"
# entity id -> (friendly name, device name) for one site with pagers 7 and 66 and schedule 28487.
ONE_SITE = {
    STATUS: ("iotbridge Status", "iotbridge"),
    **{
        f"sensor.t7470_transmitter_{name.lower().replace(' ', '_')}": (f"{T7470} {name}", T7470)
        for name in (
            "Guests served",
            "Late",
            "On time",
            "Average time served",
            "Active sessions",
            "Sessions started",
        )
    },
    "sensor.sensaphone_net_schedule_28487_ranges": (
        "Sensaphone.net Schedule 28487 ranges",
        "Sensaphone.net",
    ),
    **{
        f"{domain}.pager_{n}_{what.lower()}": (f"Pager {n} {what}", f"Pager {n}")
        for n in (7, 66)
        for domain, what in (
            ("button", "Start"),
            ("button", "Page"),
            ("button", "Clear"),
            ("button", "Remove"),
            ("sensor", "Session"),
            ("event", "Event"),
        )
    },
}
# Entities that follow the bridge's availability.
FOLLOWING = (
    "button.pager_66_start",
    SESSION,
    EVENT,
    "sensor.t7470_transmitter_active_sessions",
    "sensor.sensaphone_net_schedule_28487_ranges",
)


def is_state(value: str) -> Callable[[State | None], bool]:
    return lambda s: s is not None and s["state"] == value


def available(state: State | None) -> bool:
    # A button's state is its last press, an event entity's its last event: unknown at first.
    return state is not None and state["state"] != "unavailable"


def event_type(value: str) -> Callable[[State], bool]:
    return lambda s: s["attributes"].get("event_type") == value


async def settled(ha: HomeAssistant, node: str, count: int) -> dict[str, dict[str, Any]]:
    """The node's entities once HA has built `count` of them."""
    return await ha.until(lambda: ha.mqtt_entities(node), lambda found: len(found) >= count, 30)


async def ready(ha: HomeAssistant) -> None:
    """The bridge is announced and pager 66 reads idle."""
    await ha.wait_state(SESSION, is_state("idle"), timeout=30)


# -- devices and entities ------------------------------------------------------------------


async def test_one_site(ha: HomeAssistant, bridge: BridgeFactory) -> None:
    await bridge(IOTBRIDGE_PAGER_NUMBERS="66,7")
    entities = await settled(ha, NODE, len(ONE_SITE))
    assert set(entities) == set(ONE_SITE)
    devices = {d["id"]: d for d in await ha.devices()}
    for entity_id, (friendly, device) in ONE_SITE.items():
        assert devices[entities[entity_id]["device_id"]]["name"] == device
        state = await ha.wait_state(entity_id, available)
        assert state is not None
        assert state["attributes"]["friendly_name"] == friendly
    # The pagers hang off the transmitter, the transmitter and Sensaphone off the bridge.
    by_name = {d["name"]: d for d in devices.values()}
    assert by_name["Pager 66"]["via_device_id"] == by_name[T7470]["id"]
    assert by_name[T7470]["via_device_id"] == by_name["iotbridge"]["id"]
    assert by_name["Sensaphone.net"]["via_device_id"] == by_name["iotbridge"]["id"]
    # First states: what is true before anything happened.
    await ha.wait_state(STATUS, is_state("on"))
    for n in (7, 66):
        await ha.wait_state(f"sensor.pager_{n}_session", is_state("idle"))
    await ha.wait_state("sensor.t7470_transmitter_guests_served", is_state("0"))
    for share in ("late", "on_time", "average_time_served"):  # no guest served yet
        await ha.wait_state(f"sensor.t7470_transmitter_{share}", is_state("unknown"))
    await ha.wait_state(
        "sensor.sensaphone_net_schedule_28487_ranges",
        lambda s: s is not None and s["state"].isdigit(),
    )


async def test_two_sites(
    ha: HomeAssistant, bridge: BridgeFactory, pager_sim: PagerSimulator, tmp_path: Path
) -> None:
    """Each site's devices carry its name; ids and topics carry it too, so the sites of one
    process never overwrite each other in Home Assistant, even with `discovery.node` set."""
    async with started_sim() as south_sim:
        config = tmp_path / "sites.yaml"
        lines = ["discovery: {enabled: true, node: acme}", "sites:"]
        for name, sim in (("north", pager_sim), ("south", south_sim)):
            pager = f"{{url: 'coap://127.0.0.1:{sim.port}', numbers: [66]}}"
            lines.append(f"  - {{name: {name}, pager: {pager}}}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        await bridge(IOTBRIDGE_CONFIG=str(config))
        north = await settled(ha, "iotbridge_acme-north", 13)
        south = await settled(ha, "iotbridge_acme-south", 13)
        for site, entities in (("north", north), ("south", south)):
            assert len(entities) == 13
            assert all(e.split(".")[1].startswith(f"{site}_") for e in entities), entities
            assert not any(e.endswith("_2") for e in entities)
            assert f"button.{site}_pager_66_start" in entities
            assert f"binary_sensor.{site}_iotbridge_status" in entities
        names = {d["name"] for d in await ha.devices()}
        for site in ("north", "south"):
            assert {f"{site} iotbridge", f"{site} {T7470}", f"{site} Pager 66"} <= names
            await ha.wait_state(f"sensor.{site}_pager_66_session", is_state("idle"))
        await ha.press("button.north_pager_66_start")
        await ha.wait_state("sensor.north_pager_66_session", is_state("started"))
        assert (await ha.state("sensor.south_pager_66_session") or {})["state"] == "idle"


# -- a pager driven from Home Assistant -----------------------------------------------------


async def test_start_page_clear_from_the_buttons(ha: HomeAssistant, bridge: BridgeFactory) -> None:
    await bridge(IOTBRIDGE_PAGER_NUMBERS="66")
    await ready(ha)
    mark = len(ha.changes)
    await ha.press("button.pager_66_start")
    await ha.wait_change(EVENT, event_type("started"), mark)
    started = await ha.wait_state(SESSION, is_state("started"))
    assert started is not None
    attributes = started["attributes"]
    # The transmitter's defaults: its defaultTargetGoal and a party of one.
    assert (attributes["goal"], attributes["party_size"], attributes["label"]) == (300, 1, None)
    assert isinstance(attributes["started"], str)
    assert 0 <= attributes["elapsed"] < 60

    await ha.press("button.pager_66_page")
    await ha.wait_change(EVENT, event_type("paged"), mark)
    await ha.wait_state(SESSION, is_state("paged"))

    await ha.press("button.pager_66_clear")
    cleared = await ha.wait_change(EVENT, event_type("cleared"), mark)
    assert cleared["attributes"]["session"]["number"] == 66
    idle = await ha.wait_state(SESSION, is_state("idle"))
    assert idle is not None
    assert "label" not in idle["attributes"]
    # One guest served: the shares are known now.
    await ha.wait_state("sensor.t7470_transmitter_guests_served", is_state("1"))
    on_time = await ha.wait_state("sensor.t7470_transmitter_on_time", is_state("100"))
    assert on_time is not None
    assert on_time["attributes"]["unit_of_measurement"] == "%"


async def test_an_automation_sets_any_field(ha: HomeAssistant, bridge: BridgeFactory) -> None:
    """What an automation does: mqtt.publish on the pager's command topic."""
    await bridge(IOTBRIDGE_PAGER_NUMBERS="66")
    await ready(ha)
    command = {"action": "start", "label": "Sarah", "partySize": 4, "goal": 600}
    await ha.call("mqtt", "publish", topic="pager/66/action", payload=json.dumps(command))
    started = await ha.wait_state(SESSION, is_state("started"))
    assert started is not None
    assert {k: started["attributes"][k] for k in ("label", "party_size", "goal")} == {
        "label": "Sarah",
        "party_size": 4,
        "goal": 600,
    }


# The README's automation that tells someone when a command on the pager failed.
FAILED = {
    "id": "pager_66_failed",
    "alias": "Pager command failed",
    "triggers": [{"trigger": "state", "entity_id": EVENT}],
    "conditions": [
        {
            "condition": "template",
            "value_template": "{{ trigger.to_state.attributes.event_type == 'error' }}",
        }
    ],
    "actions": [
        {
            "action": "persistent_notification.create",
            "data": {
                "message": "Pager 66: {{ trigger.to_state.attributes.action }} failed: "
                "{{ trigger.to_state.attributes.error.message }}"
            },
        }
    ],
}


async def test_a_refused_press_is_an_error_event(
    ha: HomeAssistant, bridge: BridgeFactory, peer: Peer
) -> None:
    await bridge(IOTBRIDGE_PAGER_NUMBERS="66")
    await ready(ha)
    mark = len(ha.changes)
    async with ha.automation(FAILED):
        await ha.wait_state("automation.pager_command_failed", is_state("on"))
        await ha.press("button.pager_66_page")  # no session to page: the transmitter refuses
        error = await ha.wait_change(EVENT, event_type("error"), mark)
        notified = await ha.until(ha.notifications, bool)
    assert notified[0]["message"].startswith("Pager 66: page failed: transmitter answered 4.04")
    attributes = error["attributes"]
    assert attributes["action"] == "page"
    assert attributes["error"]["code"] == "upstream_error"
    assert "no active session" in attributes["error"]["message"]
    # The result says the same, after the event.
    result = await peer.wait_for(lambda m: m[0] == "pager/66/action/result")
    assert json.loads(result[1])["error"]["code"] == "upstream_error"
    topics = [m[0] for m in peer.messages]
    assert topics.index("pager/66/event") < topics.index("pager/66/action/result")
    assert (await ha.state(SESSION) or {})["state"] == "idle"


# -- availability and re-announcement -------------------------------------------------------


async def test_unavailable_on_sigterm_and_on_sigkill(
    ha: HomeAssistant, bridge: BridgeFactory
) -> None:
    process = await bridge(IOTBRIDGE_PAGER_NUMBERS="66")
    for how in (signal.SIGTERM, signal.SIGKILL):
        for entity_id in FOLLOWING:
            await ha.wait_state(entity_id, available, timeout=30)
        await ha.wait_state(STATUS, is_state("on"))
        code = await asyncio.to_thread(process.signal, how)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        for entity_id in FOLLOWING:
            await ha.wait_state(entity_id, is_state("unavailable"))
        # The status itself stays available, and says the bridge is off (`offline`: published
        # on SIGTERM, the last will on SIGKILL).
        await ha.wait_state(STATUS, is_state("off"))
        if how == signal.SIGTERM:
            process.start()
            await until_ready(process)


async def test_announced_again_when_home_assistant_comes_back(
    ha: HomeAssistant, bridge: BridgeFactory, peer: Peer
) -> None:
    await bridge(IOTBRIDGE_PAGER_NUMBERS="66")
    await ready(ha)
    # HA forgets everything (here: the broker lost its retained configs, HA removed them).
    await clear_retained(ha.server.mqtt_port, "homeassistant/#")
    await until_no_mqtt_entities(ha)
    mark = len(peer.messages)
    await ha.reload_mqtt()  # HA's MQTT integration reconnects and sends its birth message
    await peer.wait_for(
        lambda m: m[0] == "homeassistant/status" and peer.messages.index(m) >= mark, 30
    )
    for entity_id in FOLLOWING:
        await ha.wait_state(entity_id, available, timeout=30)
    await ready(ha)
