"""Wire models of the LRS T7470 CoAP API (paging-systems.readme.io v1.2).

The request bodies the bridge sends, and the device's documented reply shapes, which the simulator
answers with and the JSON Schemas of `pager/<number>/session` and `pager/statistics` describe.
The documentation says every envelope field may be absent, so every field here is optional.
Field names are the device's own camelCase. The bridge does not decode replies into these types:
it reads them tolerantly (`bridge.pager.t7470_read`), since a real device may differ from the docs.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SessionState = Literal["started", "paged", "cleared"]
ClearType = Literal["STOP", "REMOVED"]


class Wire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of device payloads: tolerant on decode, compact on encode."""


class Statistics(Wire):
    guestsServed: int | None = None  # noqa: N815 - the device's field names
    percentLate: float | None = None  # noqa: N815
    percentOnTime: float | None = None  # noqa: N815
    averageTimeServed: float | None = None  # noqa: N815
    numSessions: int | None = None  # noqa: N815


class Session(Wire):
    id: int | None = None
    sessionSequence: int | None = None  # noqa: N815
    uuid: str | None = None
    number: int | None = None
    partySize: int | None = None  # noqa: N815
    goalInSeconds: int | None = None  # noqa: N815
    created: str | None = None
    started: str | None = None
    notified: str | None = None
    cleared: str | None = None
    label: str | None = None
    state: str | None = None
    clearType: str | None = None  # noqa: N815 - history items and removal notifications
    pageMode: str | None = None  # noqa: N815


class DeviceSettings(Wire):
    datetime: str | None = None
    systemId: int | None = None  # noqa: N815
    defaultTargetGoal: int | None = None  # noqa: N815
    # The hour of the day (0-24) at which the device clears its statistics: a number.
    statisticsClearMark: int | None = None  # noqa: N815


class Envelope(Wire):
    responseTypes: list[str] | None = None  # noqa: N815
    globalSessionSequence: int | None = None  # noqa: N815
    timestamp: str | None = None
    deviceName: str | None = None  # noqa: N815
    firmwareVersion: str | None = None  # noqa: N815
    statistics: Statistics | None = None
    sessions: list[Session] | None = None
    session_history: list[Session] | None = None
    settings: DeviceSettings | None = None


# Request bodies. The device rejects whitespace, so they are always encoded with msgspec
# (which never emits any outside strings).


class CreateSession(Wire):
    number: int
    goal: int | None = None
    label: str | None = None
    partySize: int | None = None  # noqa: N815
    action: str | None = None


class UpdateSession(Wire):
    goal: int | None = None
    label: str | None = None
    partySize: int | None = None  # noqa: N815
    action: str | None = None
    pageMode: str | None = None  # noqa: N815


class StandalonePage(Wire):
    number: int
    pageMode: str | None = None  # noqa: N815
    message: str | None = None
    systemId: int | None = None  # noqa: N815


ENCODER = msgspec.json.Encoder()


def encode(body: Wire) -> bytes:
    """Compact JSON: no whitespace outside strings, as the device requires."""
    return ENCODER.encode(body)
