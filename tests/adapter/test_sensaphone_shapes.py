"""SensaphoneClient against a Sensaphone whose replies are shaped otherwise than our simulator's.

The simulator was written from the same reading of the API documentation as the bridge, so it
shares the bridge's misreadings. Here it keeps its semantics (logins, sessions, ranges) over real
HTTP on 127.0.0.1, but every reply is reshaped as a real Sensaphone might send it: ids, codes and
numbers as text, a start time as a number, fields nobody documented, optional fields left out,
bodies past the size cap.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from bridge.errors import UpstreamError
from bridge.ops.metrics import Metrics
from bridge.schedules.sensaphone import Parent, TimeRange
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.adapter.conftest import SENSAPHONE_PASSWORD, MakeClient, sensaphone_clients

PASSWORD = SENSAPHONE_PASSWORD
DEVICE = Parent("default_schedule", device_id=1234)
CONTACT = Parent("contact_schedule", user_id=55, contact_id=66)
IDS = ("acctid", "device_id", "user_id", "contact_id", "schedule_id", "range_id")
# Fields a real Sensaphone might add to a range: the bridge passes them on unchanged.
EXTRA = {"label": 7, "enabled": True, "owner": {"user_id": "55", "tags": ["night"]}, "note": None}


def other_range(item: dict[str, Any]) -> dict[str, Any]:
    """A range as another Sensaphone writes it: interval as text, a start of "08:00" as the
    number 800, an end of "22:00" left out, and fields nobody documented."""
    shaped = {**item, **EXTRA}
    if "interval" in shaped:
        shaped["interval"] = str(shaped["interval"])
    if shaped.get("start") == "08:00":
        shaped["start"] = 800
    if shaped.get("end") == "22:00":
        del shaped["end"]
    return shaped


def other(value: Any) -> Any:
    """The whole reply as another Sensaphone writes it: every id and code as text, the login's
    numbers as text, ranges as `other_range`."""
    if isinstance(value, list):
        return [other(item) for item in value]
    if not isinstance(value, dict):
        return value
    shaped: dict[str, Any] = {}
    for key, item in value.items():
        if key == "timerange" and isinstance(item, list):
            shaped[key] = [other_range(other(r)) for r in item]
        elif key in (*IDS, "code", "login_timestamp", "session_expiration") and item is not None:
            shaped[key] = str(item)
        else:
            shaped[key] = other(item)
    return shaped


@pytest.fixture
def sim() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator() as simulator:
        simulator.reshape = other
        yield simulator


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_client(sim: SensaphoneSimulator, metrics: Metrics) -> AsyncIterator[MakeClient]:
    async with sensaphone_clients(sim.url, metrics=metrics.sensaphone_observer()) as make:
        yield make


def limit_count(metrics: Metrics) -> float | None:
    labels = {"limit": "sensaphone_reply"}
    return metrics.registry.get_sample_value("iotbridge_limits_reached_total", labels)


# -- every operation, both modes, replies shaped otherwise ----------------------------------------


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_read_takes_text_ids_and_passes_the_rest_on(
    make_client: MakeClient, mode: str
) -> None:
    ranges = await make_client(mode=mode).read(28487, DEVICE)
    assert [r.wire() for r in ranges] == [
        {"range_id": 58381, "end": "17:00", "interval": 127, "start": 800, **EXTRA},
        {"range_id": 51587, "start": "17:00", "interval": 7, **EXTRA},
    ]
    assert [(r.range_id, r.interval, r.start) for r in ranges] == [
        (58381, 127, None),  # the number is passed on as sent, in `extra`
        (51587, 7, "17:00"),
    ]


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_every_change_succeeds_with_what_sensaphone_answered(
    make_client: MakeClient, sim: SensaphoneSimulator, mode: str
) -> None:
    client = make_client(mode=mode)
    created = await client.create(300, CONTACT, TimeRange(start="06:00", end="07:30"))
    assert [r.wire() for r in created] == [
        {"start": "06:00", "end": "07:30", "interval": 127, "range_id": 90001, **EXTRA}
    ]
    updated = await client.update(300, CONTACT, TimeRange(range_id=90001, interval=62))
    assert [(r.range_id, r.interval, r.extra) for r in updated] == [(90001, 62, EXTRA)]
    deleted = await client.delete(300, CONTACT, 90001)
    assert [r.wire() for r in deleted] == [{"range_id": 90001, **EXTRA}]
    assert [r["range_id"] for r in sim.store.ranges("contact_schedule", (55, 66, 300))] == [70001]
    assert sim.ranges_created == 1
    assert sim.logins == 1  # the login's text acctid and lifetime were understood


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_a_refusal_with_a_text_code_carries_it_as_a_number(
    make_client: MakeClient, mode: str
) -> None:
    with pytest.raises(UpstreamError) as info:
        await make_client(mode=mode).update(28487, DEVICE, TimeRange(range_id=424242, interval=1))
    assert type(info.value) is UpstreamError
    assert info.value.detail == {"code": 4, "message": "Not found: range 424242"}


async def test_session_expired_as_text_code_logs_in_again(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    client = make_client()
    await client.read(28487, DEVICE)
    sim.expire_sessions()  # answered {"code": "2"}
    assert len(await client.read(28487, DEVICE)) == 2
    assert sim.logins == 2


# -- envelopes and logins shaped otherwise -----------------------------------------------------


def shaped_envelope(
    result: dict[str, Any], login: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> Callable[[dict[str, Any]], Any]:
    """A reshape that replaces each reply's `result` and, for logins, rewrites the response."""

    def reshape(reply: dict[str, Any]) -> Any:
        response = reply.get("response")
        if login is not None and isinstance(response, dict) and "acctid" in response:
            response = login(response)
        if reply["result"]["success"]:
            return {"result": result, "response": response}
        return reply

    return reshape


@pytest.mark.parametrize(
    "result",
    [
        {"success": "true", "code": "0", "message": "OK"},
        {"code": 0},  # no success flag: code 0 says it
        {"success": 1, "code": "0", "message": {"text": "OK"}, "request_id": "a1"},
    ],
    ids=["text", "code-only", "odd-types"],
)
async def test_result_envelopes_shaped_otherwise(
    make_client: MakeClient, sim: SensaphoneSimulator, result: dict[str, Any]
) -> None:
    sim.reshape = shaped_envelope(result)
    assert len(await make_client().read(28487, DEVICE)) == 2


async def test_a_login_without_lifetime_keeps_its_session_until_code_2(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    def bare(response: dict[str, Any]) -> dict[str, Any]:
        return {"acctid": response["acctid"], "session": response["session"], "tier": "gold"}

    sim.reshape = shaped_envelope({"success": True, "code": 0}, login=bare)
    client = make_client(renew_margin=3600)  # would renew at once, had it a lifetime
    for _ in range(3):
        await client.read(28487, DEVICE)
    assert sim.logins == 1
    sim.expire_sessions()
    await client.read(28487, DEVICE)
    assert sim.logins == 2


async def test_a_login_without_a_session_is_a_clear_error(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    sim.reshape = shaped_envelope({"success": True}, login=lambda r: {"acctid": r["acctid"]})
    with pytest.raises(UpstreamError, match="login reply is malformed: session is missing"):
        await make_client().read(28487, DEVICE)


# -- what the bridge computes with stays checked -------------------------------------------------


def answering(response: Any) -> Callable[[dict[str, Any]], Any]:
    """A reshape that answers every timerange request with `response` (logins as they are)."""

    def reshape(reply: dict[str, Any]) -> Any:
        if isinstance(reply.get("response"), dict) and "acctid" in reply["response"]:
            return reply
        return {"result": {"success": True, "code": 0}, "response": response}

    return reshape


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({"device": [{"device_id": 999, "default_schedule": []}]}, "no device with device_id 1234"),
        (
            {"device": [{"device_id": "1234", "default_schedule": [{"schedule_id": "1"}]}]},
            "no default_schedule with schedule_id 28487",
        ),
        ({"timerange": "08:00-17:00"}, "timerange is a string, not an array"),
        ({"timerange": [{"range_id": "r-1", "start": "08:00"}]}, "range_id 'r-1' is not an int"),
        ({"timerange": [42]}, "a timerange is a number, not an object"),
    ],
    ids=["other-device", "other-schedule", "text", "id", "not-object"],
)
async def test_a_read_that_cannot_be_told_apart_is_a_clear_error(
    make_client: MakeClient, sim: SensaphoneSimulator, response: Any, message: str
) -> None:
    sim.reshape = answering(response)
    with pytest.raises(UpstreamError, match="reply to the read is unusable: .*" + message):
        await make_client().read(28487, DEVICE)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (None, []),  # no body at all: nothing echoed
        ({"timerange": {"range_id": 5, "start": "x"}}, [{"range_id": 5, "start": "x"}]),
        ({"default_schedule": [{"timerange": [{"range_id": "5"}]}]}, [{"range_id": 5}]),
        (
            {"device": {"default_schedule": [{"schedule_id": 28487.0, "timerange": [{"a": 1}]}]}},
            [{"a": 1}],
        ),
    ],
    ids=["empty", "lone-object", "parent-left-out", "lone-parent-without-id"],
)
async def test_parents_and_arrays_may_be_left_out(
    make_client: MakeClient, sim: SensaphoneSimulator, response: Any, expected: Any
) -> None:
    sim.reshape = answering(response)
    assert [r.wire() for r in await make_client().read(28487, DEVICE)] == expected


async def test_a_change_carried_out_is_never_an_error_for_its_echo(
    make_client: MakeClient, sim: SensaphoneSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = make_client()
    await client.read(28487, DEVICE)  # logged in
    sim.reshape = answering({"device": [{"device_id": 1234, "default_schedule": "done"}]})
    assert await client.create(28487, DEVICE, TimeRange(start="05:00")) == []
    assert sim.ranges_created == 1
    assert "carried out the create; its reply is unreadable" in caplog.text
    sim.reshape = answering({"timerange": [{"range_id": "r-9", "start": 5}, "junk"]})
    changed = await client.update(28487, DEVICE, TimeRange(range_id=58381, interval=1))
    assert [r.wire() for r in changed] == [{"range_id": "r-9", "start": 5}]  # as sent


# -- the size of a reply ---------------------------------------------------------------------------

CAP = 64 * 1024
BIG = 16 * 1024 * 1024


def padded(_reply: dict[str, Any]) -> bytes:
    """A success envelope with a 16 MiB field nobody documented: valid JSON, far past the cap."""
    return b'{"result":{"success":true,"code":0},"padding":"' + b"x" * BIG + b'"}'


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "streamed"])
async def test_a_reply_past_the_cap_is_refused_counted_and_not_read(
    make_client: MakeClient, sim: SensaphoneSimulator, metrics: Metrics, announced: bool
) -> None:
    client = make_client(max_reply_bytes=CAP)
    assert len(await client.read(28487, DEVICE)) == 2  # small replies pass
    sent: list[int] = []

    def stream(_reply: dict[str, Any]) -> Iterator[bytes]:
        yield b'{"result":{"success":true,"code":0},"padding":"'
        for _ in range(BIG // 65536):
            sent.append(65536)
            yield b"x" * 65536
        yield b'"}'

    sim.reshape = padded if announced else stream
    with pytest.raises(UpstreamError, match=f"reply larger than {CAP} bytes") as info:
        await client.create(28487, DEVICE, TimeRange(start="05:00"))
    assert type(info.value) is UpstreamError  # answered upstream_error
    assert info.value.detail == {"http_status": 200, "limit": CAP}
    assert sim.requests["json", "create"] == 1  # not retried: it would be as large again
    assert limit_count(metrics) == 1
    if not announced:
        assert sum(sent) < BIG / 2  # the client stopped reading; the server gave up writing
