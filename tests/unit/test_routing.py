"""Routing: topic + payload to a typed command, with every limit checked first. No I/O."""

from __future__ import annotations

import pytest

from bridge.config import LimitSettings, PagerSettings
from bridge.contract import models
from bridge.contract.topics import Topics
from bridge.core.routing import Router, transaction_of
from bridge.errors import BridgeError


@pytest.fixture
def router() -> Router:
    return Router(Topics(), PagerSettings(max_label=10), LimitSettings(max_payload=256))


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b'{"action":"start","label":"Sarah","partySize":4,"goal":60}', models.Start),
        (b'{"action":"page","pageMode":"Vibe1"}', models.Page),
        (b"page", models.Page),
        (b'"clear"', models.Clear),
        (b" remove\n", models.Remove),
        (b'{"action":"update","label":"Bob"}', models.Update),
        (b'{"action":"delete"}', models.Delete),
        (b'{"action":"alert","message":"hi"}', models.Alert),
        (b"get", models.Get),
    ],
)
def test_pager_commands(router: Router, payload: bytes, kind: type) -> None:
    request = router.route("pager/66/action", payload)
    assert isinstance(request.command, kind)
    assert request.key == ("pager", 66)


@pytest.mark.parametrize(
    "action",
    [
        "list",
        "clear_all",
        "history",
        "clear_history",
        "statistics",
        "clear_statistics",
        "get_settings",
    ],
)
def test_base_commands(router: Router, action: str) -> None:
    request = router.route("pager/base/action", action.encode())
    assert request.command.__struct_config__.tag == action


def test_set_settings(router: Router) -> None:
    request = router.route(
        "pager/base/action", b'{"action":"set_settings","settings":{"defaultTargetGoal":120}}'
    )
    assert isinstance(request.command, models.SetSettings)
    assert request.command.settings.defaultTargetGoal == 120


def test_schedule_commands(router: Router) -> None:
    request = router.route(
        "schedule/28487/timerange",
        b'{"action":"update","range_id":5,"interval":{"days":["mon"]},"device_id":1234}',
    )
    assert isinstance(request.command, models.UpdateRange)
    assert request.key == ("schedule", 28487)


@pytest.mark.parametrize(
    ("topic", "payload", "code", "message"),
    [
        ("pager/66/action", b"{not json", "invalid_payload", "not valid JSON"),
        (
            "pager/66/action",
            b"",
            "invalid_payload",
            "empty payload: send a JSON object or a bare action word",
        ),
        ("pager/66/action", b"  \n", "invalid_payload", "empty payload"),
        ("pager/66/action", b"\xff\xfe{}", "invalid_payload", "payload is not UTF-8 (byte 0)"),
        # Invalid UTF-8 inside a JSON string: msgspec raises UnicodeDecodeError, not DecodeError.
        ("pager/66/action", b'{"action":"start","label":"\xff"}', "invalid_payload", "UTF-8"),
        ("pager/66/action", b'{"action":"\xb1\xc2"}', "invalid_payload", "UTF-8"),
        (
            "schedule/1/timerange",
            b'{"action":"create","start":"\xe2\x28"}',
            "invalid_payload",
            "UTF-8",
        ),
        ("pager/66/action", b'{"action":"fly"}', "unknown_action", "unknown action 'fly'"),
        ("pager/66/action", b"fly", "unknown_action", "unknown action 'fly'"),
        ("pager/66/action", b'{"label":"x"}', "invalid_payload", "missing field `action`"),
        ("pager/66/action", b"[1,2]", "invalid_payload", "JSON object or a bare action word"),
        ("pager/66/action", b'{"action":"start","goal":"soon"}', "invalid_payload", "goal"),
        ("pager/66/action", b'{"action":"start","goal":-5}', "invalid_payload", "goal"),
        ("pager/66/action", b'{"action":"start","partySize":4.5}', "invalid_payload", "partySize"),
        (
            "pager/66/action",
            b'{"action":"start","label":"far too long"}',
            "invalid_payload",
            "label is 12 characters; the limit is 10",
        ),
        (
            "pager/66/action",
            b'{"action":"page","pageMode":"Siren"}',
            "invalid_payload",
            "pageMode 'Siren' is not allowed",
        ),
        ("pager/66/action", b'{"action":"page","colour":"red"}', "invalid_payload", "colour"),
        ("pager/66/action", b"x" * 300, "invalid_payload", "300 bytes; the limit is 256"),
        ("pager/abc/action", b"page", "invalid_topic", "positive integer"),
        ("pager/70000/action", b"page", "invalid_topic", "between 1 and 65535"),
        ("pager/base/action", b"page", "unknown_action", "unknown action 'page'"),
        ("schedule/1/timerange", b'{"action":"update"}', "invalid_payload", "range_id"),
        (
            "schedule/1/timerange",
            b'{"action":"delete","range_id":"x"}',
            "invalid_payload",
            "range_id",
        ),
        (
            "schedule/1/timerange",
            b'{"action":"create","interval":16384}',
            "invalid_payload",
            "interval",
        ),
    ],
)
def test_bad_input_is_explained(
    router: Router, topic: str, payload: bytes, code: str, message: str
) -> None:
    with pytest.raises(BridgeError) as caught:
        router.route(topic, payload)
    assert caught.value.code == code
    assert message in caught.value.message


def test_transaction_is_recovered_from_invalid_payloads() -> None:
    assert transaction_of(b'{"action":"fly","transaction":"abc"}') == "abc"
    assert transaction_of(b'{"transaction":7}') == 7
    assert transaction_of(b"{broken") is None
    assert transaction_of(b'{"transaction":true}') is None
    assert transaction_of(b'{"transaction":"\xff"}') is None  # invalid UTF-8: no crash
    assert transaction_of(b'"\xb1"') is None


@pytest.mark.parametrize(
    ("topic", "payload", "labels"),
    [
        ("pager/66/action", b'{"action":"start","label":"far too long"}', ("pager", "start")),
        ("pager/66/action", b"page", ("pager", "page")),
        ("pager/66/action", b'{"action":"fly"}', ("pager", "none")),
        ("pager/66/action", b"{not json", ("pager", "none")),
        (
            "pager/base/action",
            b'{"action":"set_settings","settings":1}',
            ("pager_base", "set_settings"),
        ),
        ("schedule/9/timerange", b'{"action":"create","interval":-1}', ("schedule", "create")),
        ("pager/0/action", b"page", ("invalid", "none")),
    ],
)
def test_a_refused_command_is_labelled_by_what_it_attempted(
    router: Router, topic: str, payload: bytes, labels: tuple[str, str]
) -> None:
    assert router.attempted(topic, payload) == labels
