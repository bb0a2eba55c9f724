"""The command table (bridge.contract.commands) is the one place each command topic is described:
routing, dispatch, the site and the generated documents all read it."""

from __future__ import annotations

import typing

import msgspec
import pytest

from bridge.config import PagerSettings
from bridge.contract import asyncapi, commands, schema
from bridge.contract.topics import CommandTopic, Topics
from bridge.errors import InvalidPayload
from tests.support import settings


def concrete(address: str) -> str:
    return address.replace("{number}", "66").replace("{schedule_id}", "28487")


def test_every_command_topic_has_exactly_one_kind() -> None:
    kinds = {kind.topic for kind in commands.COMMANDS}
    assert kinds == set(typing.get_args(CommandTopic))
    assert len({kind.route for kind in commands.COMMANDS}) == len(commands.COMMANDS)


@pytest.mark.parametrize("kind", commands.COMMANDS, ids=lambda k: k.route)
def test_a_kind_parses_its_own_address_and_decodes_its_actions(
    kind: commands.CommandKind,
) -> None:
    target = Topics("site").parse(f"site/{concrete(kind.address)}")
    assert commands.kind_of(target) is kind
    assert kind.lane(target)[0] in {"pager", "schedule"}
    for action in kind.actions:
        payload = b'{"action":"%s"}' % action.encode()
        try:
            command = kind.decoder.decode(payload)
        except msgspec.ValidationError:
            # The action is known and a field it needs is missing: the tag was accepted.
            with pytest.raises(msgspec.ValidationError, match="missing required field"):
                kind.decoder.decode(payload)
            continue
        assert str(command.__struct_config__.tag) == action
        kind.check(command, PagerSettings())


def test_lanes_keep_pagers_schedules_and_the_base_station_apart() -> None:
    topics = Topics()
    lanes = {
        commands.kind_of(t := topics.parse(topic)).lane(t)
        for topic in ("pager/1/action", "pager/2/action", "pager/base/action")
    }
    lanes.add(commands.SCHEDULE.lane(topics.parse("schedule/1/timerange")))
    assert lanes == {("pager", 1), ("pager", 2), ("pager", 0), ("schedule", 1)}


def test_checks_that_depend_on_the_configuration() -> None:
    narrow = PagerSettings(page_modes=["Beep"], max_label=3)
    with pytest.raises(InvalidPayload, match="pageMode 'Vibe1' is not allowed"):
        commands.PAGER.check(
            commands.PAGER.decoder.decode(b'{"action":"page","pageMode":"Vibe1"}'), narrow
        )
    with pytest.raises(InvalidPayload, match="label is 4 characters"):
        commands.PAGER.check(
            commands.PAGER.decoder.decode(b'{"action":"start","label":"Anna"}'), narrow
        )


def test_the_documents_are_generated_from_the_table() -> None:
    for kind in commands.COMMANDS:
        payload, title = schema.DOCUMENTS[kind.document]
        assert payload is kind.payload
        assert title.startswith("Command on ")
    channels = {c.key: c for c in asyncapi.CHANNELS}
    for kind in commands.COMMANDS:
        assert channels[kind.channel].address == kind.address
        assert channels[kind.channel].action == "receive"


def test_the_site_binds_an_executor_to_every_kind() -> None:
    from bridge.ops.metrics import Metrics  # noqa: PLC0415
    from bridge.site import Site  # noqa: PLC0415

    site = Site("default", settings(), Metrics())
    assert set(site._by_route) == {kind.route for kind in commands.COMMANDS}
