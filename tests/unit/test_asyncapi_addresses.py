"""Every channel address in the AsyncAPI document is a topic `Topics` builds: the document and the
bridge cannot drift apart, with or without the site's prefix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge.contract import asyncapi
from bridge.contract.topics import Topics

NUMBER = 66
SCHEDULE_ID = 28487

# Channel key -> the topic the bridge uses for it, built by `Topics` for NUMBER and SCHEDULE_ID.
BUILT: dict[str, Callable[[Topics], str]] = {
    "pagerAction": lambda t: t.pager_action(NUMBER),
    "pagerBaseAction": lambda t: t.base_action(),
    "scheduleTimerange": lambda t: t.schedule_command(SCHEDULE_ID),
    "pagerSession": lambda t: t.pager_session(NUMBER),
    "pagerEvent": lambda t: t.pager_event(NUMBER),
    "pagerStatistics": lambda t: t.statistics,
    "scheduleTimeranges": lambda t: t.schedule_ranges(SCHEDULE_ID),
    "bridgeState": lambda t: t.bridge_state,
    "bridgeDeadletter": lambda t: t.deadletter,
    "bridgeObserver": lambda t: t.observer,
}
COMMANDS = ("pagerAction", "pagerBaseAction", "scheduleTimerange")


def built(key: str, topics: Topics) -> str:
    """What the bridge builds for the channel `key` (a command's result channel too)."""
    if key.endswith("Result"):
        return Topics.result(BUILT[key.removesuffix("Result")](topics))
    return BUILT[key](topics)


def concrete(address: str, prefix: str) -> str:
    """An address with its parameters filled in and the prefix put in front, as the README
    says every address takes it."""
    topic = address.replace("{number}", str(NUMBER)).replace("{schedule_id}", str(SCHEDULE_ID))
    return f"{prefix}/{topic}" if prefix else topic


@pytest.fixture(scope="module")
def channels() -> dict[str, Any]:
    found: dict[str, Any] = asyncapi.document()["channels"]
    return found


def test_every_channel_is_one_the_bridge_builds(channels: dict[str, Any]) -> None:
    assert set(channels) == set(BUILT) | {f"{key}Result" for key in COMMANDS}


@pytest.mark.parametrize("prefix", ["", "site", "home/iot"])
def test_every_address_is_what_topics_builds(channels: dict[str, Any], prefix: str) -> None:
    topics = Topics(prefix)
    for key, channel in channels.items():
        assert concrete(channel["address"], prefix) == built(key, topics), key


@pytest.mark.parametrize("prefix", ["", "site"])
def test_every_command_address_parses_back(channels: dict[str, Any], prefix: str) -> None:
    topics = Topics(prefix)
    for key in COMMANDS:
        topics.parse(concrete(channels[key]["address"], prefix))  # InvalidTopic if it drifted


def test_the_last_will_is_the_bridge_state_topic() -> None:
    will = asyncapi.document()["servers"]["local"]["bindings"]["mqtt"]["lastWill"]
    assert will["topic"] == Topics().bridge_state
