"""The MQTT side of the contract: every payload the bridge reads or writes, as msgspec Structs.

Inbound commands are tagged unions on `action`, dispatched with `match`. Static limits (types,
ranges, lengths) live here as constraints; limits that depend on configuration (the highest pager
number, the pageMode allow-list, label length) are checked in `bridge.core.routing`.
`iotbridge schema` generates `schemas/*.json` from these types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from bridge.contract import t7470
from bridge.contract.interval import Interval


class Command(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="action"
):
    """Policy base of inbound commands.

    `transaction` is echoed in the result (for MQTT 3.1.1 clients, which have no Correlation Data);
    `sent_at` (Unix seconds) lets the bridge refuse a command that arrives too late.
    """

    transaction: str | int | None = None
    sent_at: float | None = None


Goal = Annotated[int, msgspec.Meta(ge=0, le=86_400, description="target goal in seconds")]
PartySize = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Label = Annotated[str, msgspec.Meta(max_length=1024)]
PageMode = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
SystemId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]

# -- pager/<number>/action -----------------------------------------------------------------


class Start(Command, frozen=True, tag="start"):
    """Create a session (POST /v1/sessions); `page: true` pages it at once."""

    goal: Goal | None = None
    label: Label | None = None
    partySize: PartySize | None = None  # noqa: N815 - the device's field names
    page: bool = False


class Page(Command, frozen=True, tag="page"):
    pageMode: PageMode | None = None  # noqa: N815


class Clear(Command, frozen=True, tag="clear"):
    pass


class Remove(Command, frozen=True, tag="remove"):
    pass


class Update(Command, frozen=True, tag="update"):
    """Change a session's goal, label or party size (PUT without `action`)."""

    goal: Goal | None = None
    label: Label | None = None
    partySize: PartySize | None = None  # noqa: N815


class Delete(Command, frozen=True, tag="delete"):
    pass


class Alert(Command, frozen=True, tag="alert"):
    """Page without a session (POST /v1/page)."""

    pageMode: PageMode | None = None  # noqa: N815
    message: Text | None = None
    systemId: SystemId | None = None  # noqa: N815


class Get(Command, frozen=True, tag="get"):
    pass


PagerCommand = Start | Page | Clear | Remove | Update | Delete | Alert | Get
PAGER_ACTIONS = ("start", "page", "clear", "remove", "update", "delete", "alert", "get")

# -- pager/base/action ---------------------------------------------------------------------


class ListSessions(Command, frozen=True, tag="list"):
    pass


class ClearAll(Command, frozen=True, tag="clear_all"):
    pass


class History(Command, frozen=True, tag="history"):
    pass


class ClearHistory(Command, frozen=True, tag="clear_history"):
    pass


class GetStatistics(Command, frozen=True, tag="statistics"):
    pass


class ClearStatistics(Command, frozen=True, tag="clear_statistics"):
    pass


class GetSettings(Command, frozen=True, tag="get_settings"):
    pass


class SettingsChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    datetime: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    systemId: SystemId | None = None  # noqa: N815
    defaultTargetGoal: Goal | None = None  # noqa: N815
    # The hour of the day (0-24) at which the transmitter clears its statistics.
    statisticsClearMark: Annotated[int, msgspec.Meta(ge=0, le=24)] | None = None  # noqa: N815


class SetSettings(Command, frozen=True, tag="set_settings", kw_only=True):
    settings: SettingsChange


BaseCommand = (
    ListSessions
    | ClearAll
    | History
    | ClearHistory
    | GetStatistics
    | ClearStatistics
    | GetSettings
    | SetSettings
)
BASE_ACTIONS = (
    "list",
    "clear_all",
    "history",
    "clear_history",
    "statistics",
    "clear_statistics",
    "get_settings",
    "set_settings",
)

# -- schedule/<schedule_id>/timerange -------------------------------------------------------

RangeId = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
ParentId = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
TimeText = Annotated[str, msgspec.Meta(max_length=64)]
IntervalField = Annotated[int, msgspec.Meta(ge=0, lt=2**15)] | Interval


class ScheduleCommand(Command, frozen=True):
    """Base of timerange commands: where the schedule lives may come with the command."""

    device_id: ParentId | None = None
    user_id: ParentId | None = None
    contact_id: ParentId | None = None


class ReadRanges(ScheduleCommand, frozen=True, tag="read"):
    pass


class CreateRange(ScheduleCommand, frozen=True, tag="create"):
    start: TimeText | None = None
    end: TimeText | None = None
    interval: IntervalField | None = None


class UpdateRange(ScheduleCommand, frozen=True, tag="update", kw_only=True):
    range_id: RangeId
    start: TimeText | None = None
    end: TimeText | None = None
    interval: IntervalField | None = None


class DeleteRange(ScheduleCommand, frozen=True, tag="delete", kw_only=True):
    range_id: RangeId


TimerangeCommand = ReadRanges | CreateRange | UpdateRange | DeleteRange
SCHEDULE_ACTIONS = ("read", "create", "update", "delete")

# -- outbound ------------------------------------------------------------------------------


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    detail: Any = None


class Result(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Exactly one per command, on `<command topic>/result`."""

    status: Literal["ok", "error"]
    transaction: str | int | None = None
    data: Any = None
    error: ErrorInfo | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """On `pager/<number>/event`: every change of a session, whoever made it (with the session
    as the device reported it), and every command on the pager that failed (`error`, with the
    command's `action` and the code and message of its result, published before the result)."""

    event: Literal["started", "paged", "cleared", "removed", "updated", "error"]
    number: int
    session: t7470.Session | None = None
    action: str | None = None
    error: ErrorInfo | None = None


class PagerStatistics(t7470.Statistics):
    """Retained on `pager/statistics`: the transmitter's statistics as it sent them (fields it
    adds pass through), plus the bridge's count of active sessions (`numSessions` is the
    device's count of every session ever started)."""

    activeSessions: int | None = None  # noqa: N815 - alongside the device's field names


class Claim(msgspec.Struct, frozen=True):
    """Retained on `bridge/observer` by the replica that observes the transmitter."""

    holder: str


class BridgeState(msgspec.Struct, frozen=True):
    state: Literal["online", "offline"]


class TimeRangeOut(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    range_id: int | None = None
    start: str | None = None
    end: str | None = None
    interval: int | None = None
    interval_decoded: Interval | None = None


class ScheduleRanges(msgspec.Struct, frozen=True, kw_only=True):
    """Retained on `schedule/<schedule_id>/timeranges` after each change."""

    schedule_id: int
    timeranges: list[TimeRangeOut]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A command that could not be carried out (or answered), parked for an operator."""

    topic: str
    payload: str
    reason: str
    error: ErrorInfo | None = None
    # How many times the upstream was asked: more than one means retries were exhausted.
    attempts: Annotated[int, msgspec.Meta(ge=1)] = 1


ENCODER = msgspec.json.Encoder()
ONLINE = ENCODER.encode(BridgeState("online"))
OFFLINE = ENCODER.encode(BridgeState("offline"))
