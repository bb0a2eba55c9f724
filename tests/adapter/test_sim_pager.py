"""The T7470 simulator over real CoAP/UDP, driven through `Transmitter` as the bridge drives it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import subprocess
import sys
from typing import Any

import aiocoap
import msgspec
import pytest
from aiocoap.numbers.constants import TransportTuning

from bridge.coap.client import CoapReply, Transmitter
from bridge.sim.pager.resources import is_compact
from bridge.sim.pager.server import PagerSimulator, serve
from tests.adapter.conftest import call, only

SESSIONS = "/v1/sessions"


async def test_create_answers_created_with_session_and_statistics(tx: Transmitter) -> None:
    code, body = await call(tx, "POST", body={"number": 66, "label": "Sarah", "partySize": 4})
    assert code == "2.01"
    assert body["responseTypes"] == ["sessions", "statistics"]
    assert body["deviceName"] == "T7470 Simulator"
    assert body["globalSessionSequence"] == 1
    dt.datetime.fromisoformat(body["timestamp"])  # ISO 8601 without zone
    assert "+" not in body["timestamp"]
    session = only(body)
    assert session["number"] == 66
    assert session["state"] == "started"
    assert session["label"] == "Sarah"
    assert session["partySize"] == 4
    assert session["goalInSeconds"] == 300
    assert session["sessionSequence"] == 1
    assert session["created"] == session["started"]
    assert len(session["uuid"]) == 36
    assert "notified" not in session
    assert body["statistics"]["numSessions"] == 1


async def test_create_with_page_action_pages_at_once(tx: Transmitter) -> None:
    code, body = await call(tx, "POST", body={"number": 3, "goal": 60, "action": "page"})
    assert code == "2.01"
    session = only(body)
    assert session["state"] == "paged"
    assert session["goalInSeconds"] == 60
    assert "notified" in session
    assert body["statistics"]["guestsServed"] == 1


async def test_session_ids_are_sequential(tx: Transmitter) -> None:
    ids = [only((await call(tx, "POST", body={"number": n}))[1])["id"] for n in (1, 2, 3)]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]


COMPACT_ERROR = {"error": "request body must be compact JSON"}


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"number": 5}', COMPACT_ERROR),
        (b'{"number":5,\n"label":"x"}', COMPACT_ERROR),
        (b'{\t"number":5}', COMPACT_ERROR),
        (b'{"number":5', "not valid JSON"),
        (b'{"number":"5"}', "Expected `int`, got `str`"),
        (b'{"label":"x"}', "missing required field `number`"),
        (b'{"number":0}', "number 0 is outside 1..999"),
        (b'{"number":1000}', "number 1000 is outside 1..999"),
        (b'{"number":5,"action":"dance"}', "unknown action 'dance'"),
        (b'{"number":5,"goal":-1}', "goal must not be negative"),
    ],
)
async def test_bad_create_bodies_are_refused(
    tx: Transmitter, payload: bytes, error: dict[str, str] | str
) -> None:
    code, body = await call(tx, "POST", body=payload)
    assert code == "4.00"
    if isinstance(error, dict):
        assert body == error
    else:
        assert error in body["error"]


async def test_whitespace_inside_strings_is_compact(tx: Transmitter) -> None:
    code, body = await call(tx, "POST", body=b'{"number":5,"label":"Table 4: by the\\tdoor"}')
    assert code == "2.01"
    assert only(body)["label"] == "Table 4: by the\tdoor"


@pytest.mark.parametrize(
    ("payload", "compact"),
    [
        (b'{"a":1}', True),
        (b'{"a":"x y"}', True),
        (b'{"a":"\\" "}', True),
        (b'{"a":"\\\\" }', False),
        (b'{"a":1}\n', False),
        (b'{"a": 1}', False),
    ],
)
def test_compactness_is_judged_outside_strings(payload: bytes, compact: bool) -> None:
    assert is_compact(payload) is compact


async def test_second_session_for_a_number_is_refused(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 8})
    code, body = await call(tx, "POST", body={"number": 8})
    assert code == "4.00"
    assert body == {"error": "number 8 already has an active session"}


async def test_update_changes_fields_and_sequence(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 9})
    code, body = await call(tx, "PUT", number=9, body={"goal": 120, "label": "Bob", "partySize": 2})
    assert code == "2.04"
    session = only(body)
    assert (session["goalInSeconds"], session["label"], session["partySize"]) == (120, "Bob", 2)
    assert session["state"] == "started"
    assert session["sessionSequence"] == body["globalSessionSequence"] == 2


async def test_page_clear_walks_the_state_machine(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 10})
    code, body = await call(tx, "PUT", number=10, body={"action": "page", "pageMode": "Vibe1"})
    assert code == "2.04"
    assert only(body)["state"] == "paged"
    code, body = await call(tx, "PUT", number=10, body={"action": "clear"})
    assert code == "2.04"
    final = only(body)
    assert final["state"] == "cleared"
    assert final["clearType"] == "STOP"
    assert "cleared" in final
    _, listing = await call(tx, "GET")
    assert listing["sessions"] == []
    _, history = await call(tx, "GET", "/v1/sessions/history")
    assert history["responseTypes"] == ["session_history"]
    assert [(s["number"], s["clearType"]) for s in history["session_history"]] == [(10, "STOP")]


@pytest.mark.parametrize(("method", "body"), [("PUT", {"action": "remove"}), ("DELETE", None)])
async def test_remove_and_delete_end_with_removed(
    tx: Transmitter, method: str, body: dict[str, Any] | None
) -> None:
    await call(tx, "POST", body={"number": 11, "action": "page"})
    code, reply = await call(tx, method, number=11, body=body)
    assert code == ("2.04" if method == "PUT" else "2.02")
    final = only(reply)
    assert (final["state"], final["clearType"]) == ("cleared", "REMOVED")
    _, history = await call(tx, "GET", "/v1/sessions/history")
    assert history["session_history"][-1]["clearType"] == "REMOVED"


@pytest.mark.parametrize(
    ("method", "body"),
    [("PUT", {"action": "page"}), ("DELETE", None), ("GET", None)],
)
async def test_unknown_number_is_not_found(
    tx: Transmitter, method: str, body: dict[str, Any] | None
) -> None:
    code, reply = await call(tx, method, number=42, body=body)
    assert code == "4.04"
    assert reply == {"error": "no active session for number 42"}


async def test_update_refusals(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 12})
    code, body = await call(tx, "PUT", number=12, body={"action": "explode"})
    assert (code, body["error"]) == (
        "4.00",
        "unknown action 'explode' (expected page, clear or remove)",
    )
    code, body = await call(tx, "PUT", body={"action": "page"})
    assert (code, body) == ("4.00", {"error": "query parameter number is required"})
    code, body = await call(tx, "PUT", number=5000, body={"action": "page"})
    assert (code, body) == ("4.00", {"error": "number 5000 is outside 1..999"})
    reply = await tx.request("GET", SESSIONS, query={"number": "x"})
    assert reply.code == "4.00"


async def test_delete_all_clears_every_active_session(tx: Transmitter) -> None:
    for number in (1, 2, 3):
        await call(tx, "POST", body={"number": number})
    code, body = await call(tx, "DELETE")
    assert code == "2.02"
    assert sorted(s["number"] for s in body["sessions"]) == [1, 2, 3]
    assert {(s["state"], s["clearType"]) for s in body["sessions"]} == {("cleared", "STOP")}
    _, listing = await call(tx, "GET")
    assert listing["sessions"] == []


async def test_get_one_session_is_still_an_array(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 21})
    await call(tx, "POST", body={"number": 22})
    code, body = await call(tx, "GET", number=22)
    assert code == "2.05"
    assert [s["number"] for s in body["sessions"]] == [22]
    _, everything = await call(tx, "GET")
    assert [s["number"] for s in everything["sessions"]] == [21, 22]
    assert everything["statistics"]["numSessions"] == 2


async def test_etag_answers_valid_until_something_changes(tx: Transmitter) -> None:
    first = await tx.request("GET", SESSIONS)
    assert first.code == "2.05"
    assert first.etag
    again = await tx.request("GET", SESSIONS, etag=first.etag)
    assert again == CoapReply(code="2.03", payload=b"", etag=first.etag)
    await call(tx, "POST", body={"number": 4})
    changed = await tx.request("GET", SESSIONS, etag=first.etag)
    assert changed.code == "2.05"
    assert changed.etag not in (None, first.etag)
    assert len(msgspec.json.decode(changed.payload)["sessions"]) == 1


async def test_history_is_cleared_with_deleted_and_no_body(tx: Transmitter) -> None:
    await call(tx, "POST", body={"number": 5})
    await call(tx, "DELETE", number=5)
    reply = await tx.request("DELETE", "/v1/sessions/history")
    assert (reply.code, reply.payload) == ("2.02", b"")
    _, history = await call(tx, "GET", "/v1/sessions/history")
    assert history["session_history"] == []


async def test_history_is_bounded_oldest_dropped() -> None:
    sim = PagerSimulator(port=0, history_limit=3)
    await sim.start()
    tx = Transmitter(sim.uri, timeout=2.0)
    try:
        for number in range(1, 6):
            await call(tx, "POST", body={"number": number})
            await call(tx, "DELETE", number=number)
        _, history = await call(tx, "GET", "/v1/sessions/history")
        assert [s["number"] for s in history["session_history"]] == [3, 4, 5]
    finally:
        await tx.close()
        await sim.stop()


async def test_long_history_arrives_whole_through_block2(tx: Transmitter) -> None:
    for number in range(1, 41):
        await call(tx, "POST", body={"number": number, "label": "x" * 30})
    await call(tx, "DELETE")
    reply = await tx.request("GET", "/v1/sessions/history")
    assert len(reply.payload) > 4096
    assert len(msgspec.json.decode(reply.payload)["session_history"]) == 40


async def test_statistics_math(tx: Transmitter) -> None:
    code, body = await call(tx, "GET", "/v1/sessions/statistics")
    assert code == "2.05"
    assert body["statistics"] == {
        "guestsServed": 0,
        "percentLate": 0,
        "percentOnTime": 0,
        "averageTimeServed": 0,
        "numSessions": 0,
    }
    await call(tx, "POST", body={"number": 1, "goal": 60})
    await call(tx, "POST", body={"number": 2, "goal": 600})
    await call(tx, "POST", body={"number": 3})
    # Two minutes pass on the device's clock before both guests are paged.
    _, settings = await call(tx, "GET", "/v1/settings")
    later = dt.datetime.fromisoformat(settings["settings"]["datetime"]) + dt.timedelta(seconds=121)
    await call(tx, "POST", "/v1/settings", body={"datetime": later.isoformat()})
    await call(tx, "PUT", number=1, body={"action": "page"})
    _, body = await call(tx, "PUT", number=2, body={"action": "page"})
    stats = body["statistics"]
    assert (stats["guestsServed"], stats["numSessions"]) == (2, 3)
    assert (stats["percentLate"], stats["percentOnTime"]) == (50, 50)
    assert 119 <= stats["averageTimeServed"] <= 122
    code, body = await call(tx, "DELETE", "/v1/sessions/statistics")
    assert code == "2.02"
    assert body["statistics"]["guestsServed"] == 0
    assert body["statistics"]["numSessions"] == 0
    _, settings = await call(tx, "GET", "/v1/settings")
    assert settings["settings"]["statisticsClearMark"]


async def test_settings_read_and_write(tx: Transmitter) -> None:
    code, body = await call(tx, "GET", "/v1/settings")
    assert code == "2.05"
    assert body["responseTypes"] == ["settings"]
    assert body["settings"]["defaultTargetGoal"] == 300
    code, body = await call(
        tx, "POST", "/v1/settings", body={"systemId": 7, "defaultTargetGoal": 90}
    )
    assert code == "2.04"
    assert (body["settings"]["systemId"], body["settings"]["defaultTargetGoal"]) == (7, 90)
    _, created = await call(tx, "POST", body={"number": 1})
    assert only(created)["goalInSeconds"] == 90
    code, body = await call(tx, "POST", "/v1/settings", body={"datetime": "yesterday"})
    assert (code, body) == ("4.00", {"error": "datetime 'yesterday' is not ISO 8601"})


async def test_standalone_page(tx: Transmitter, sim: PagerSimulator) -> None:
    code, body = await call(tx, "POST", "/v1/page", body={"number": 17, "message": "hi"})
    assert (code, body) == ("2.04", None)
    assert sim.device.pages[-1].pageMode == "Flash30Sec"
    assert sim.device.pages[-1].message == "hi"
    code, _ = await call(tx, "POST", "/v1/page", body={"number": 17, "pageMode": "Vibe1"})
    assert sim.device.pages[-1].pageMode == "Vibe1"
    code, body = await call(tx, "POST", "/v1/page", body={"number": 0})
    assert (code, body) == ("4.00", {"error": "number 0 is outside 1..999"})
    assert list(sim.received) == [
        (17, "POST", "alert"),
        (17, "POST", "alert"),
        (0, "POST", "alert"),
    ]


async def test_method_not_allowed_and_content_format(tx: Transmitter, sim: PagerSimulator) -> None:
    code, body = await call(tx, "PUT", "/v1/settings", body={"systemId": 1})
    assert (code, body) == ("4.05", {"error": "method not allowed on /v1/settings"})
    # A body without Content-Format 50 (the bridge always sets it; a raw client need not).
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        message = aiocoap.Message(
            code=aiocoap.POST, uri=f"{sim.uri}/v1/sessions", payload=b'{"number":1}'
        )
        response = await context.request(message).response
        assert str(response.code).startswith("4.15")
    finally:
        await context.shutdown()


async def test_received_keeps_command_order_per_number(
    tx: Transmitter, sim: PagerSimulator
) -> None:
    await call(tx, "POST", body={"number": 30})
    await call(tx, "PUT", number=30, body={"label": "x"})
    await call(tx, "PUT", number=30, body={"action": "page"})
    await call(tx, "GET", number=30)
    await call(tx, "DELETE", number=30)
    assert list(sim.received) == [
        (30, "POST", None),
        (30, "PUT", None),
        (30, "PUT", "page"),
        (30, "GET", None),
        (30, "DELETE", None),
    ]


def test_the_simulator_leaves_every_coap_packet_to_aiocoap() -> None:
    """No hand-written CoAP: the simulator (and the CLI that starts it) never loads the bridge's
    own codec or client, only aiocoap."""
    probe = (
        "import sys, bridge.cli, bridge.sim.pager.server;"
        "print(sorted(m for m in sys.modules if m.startswith('bridge.coap.client')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def free_ports(count: int) -> int:
    """The first of `count` consecutive free UDP ports on 127.0.0.1 (free when looked at)."""
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            first.bind(("127.0.0.1", 0))
            base: int = first.getsockname()[1]
            try:
                for offset in range(1, count):
                    other = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    other.bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise AssertionError("no consecutive free ports")


async def test_serve_runs_a_fleet_on_consecutive_ports() -> None:
    base = free_ports(3)
    lifetime = TransportTuning().EXCHANGE_LIFETIME
    fleet = asyncio.create_task(serve(port=base, count=3, ping_interval=30))
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        for port in range(base, base + 3):
            uri = f"coap://127.0.0.1:{port}/v1/sessions"
            async with asyncio.timeout(5):
                while True:  # until that simulator has started
                    with contextlib.suppress(aiocoap.error.NetworkError):
                        response = await context.request(
                            aiocoap.Message(code=aiocoap.GET, uri=uri)
                        ).response
                        break
                    await asyncio.sleep(0.05)
            assert response.code == aiocoap.CONTENT
        # aiocoap's duplicate detection keeps answers for 49 s, not 247 s, while serving.
        assert TransportTuning().EXCHANGE_LIFETIME == 49
    finally:
        fleet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet
        await context.shutdown()
    assert TransportTuning().EXCHANGE_LIFETIME == lifetime == 247
