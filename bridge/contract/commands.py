"""The command table: every command topic, in one place.

Each kind of command topic maps to what every layer needs of it: the payload it takes (its
decoder, its actions, the checks that depend on the site's configuration), its lane (commands
with the same key run in order), its metric route label, and how the contract documents it (JSON
Schema file, AsyncAPI channel). Routing, dispatch and the site read it, and the JSON Schema and
AsyncAPI documents are generated from it; the site binds one executor to each kind
(`bridge.site.Site`), and refuses to start if one is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

import msgspec

from bridge.config import PagerSettings
from bridge.contract import models
from bridge.contract.interval import Interval, encode_interval, parse_interval
from bridge.contract.topics import BaseTopic, CommandTopic, PagerTopic, ScheduleTopic
from bridge.errors import InvalidPayload

Route = Literal["pager", "pager_base", "schedule"]
Lane = tuple[str, int]


class CommandKind(NamedTuple):
    """One kind of command topic and everything the layers need of it."""

    route: Route  # the metric label, and the executor's name
    topic: type[CommandTopic]
    address: str  # AsyncAPI address, e.g. pager/{number}/action
    channel: str  # AsyncAPI channel key
    document: str  # JSON Schema file in schemas/
    payload: Any  # the payload's type (a tagged union of commands)
    actions: tuple[str, ...]
    decoder: msgspec.json.Decoder[Any]
    lane: Callable[[Any], Lane]  # the topic -> the key of the lane its commands wait in
    check: Callable[[Any, PagerSettings], None]  # what the types cannot say
    description: str


def _check_pager(command: Any, pager: PagerSettings) -> None:
    mode = getattr(command, "pageMode", None)
    if mode is not None and mode not in pager.page_modes:
        allowed = ", ".join(sorted(pager.page_modes))
        raise InvalidPayload(f"pageMode {mode[:64]!r} is not allowed; use one of: {allowed}")
    label = getattr(command, "label", None)
    if label is not None and len(label) > pager.max_label:
        raise InvalidPayload(f"label is {len(label)} characters; the limit is {pager.max_label}")
    message = getattr(command, "message", None)
    if message is not None and len(message) > pager.max_message:
        raise InvalidPayload(
            f"message is {len(message)} characters; the limit is {pager.max_message}"
        )


def _check_interval(command: Any, _pager: PagerSettings) -> None:
    """Refuse the reserved bit and contradictory forms before any work is done."""
    interval = getattr(command, "interval", None)
    if isinstance(interval, int):
        parse_interval(interval)
    elif isinstance(interval, Interval):
        encode_interval(interval)


def _nothing_more(_command: Any, _pager: PagerSettings) -> None:
    return


def _pager_lane(topic: PagerTopic) -> Lane:
    return ("pager", topic.number)


def _base_lane(_topic: BaseTopic) -> Lane:
    # The base station shares the transmitter's lanes' namespace: pager numbers start at 1.
    return ("pager", 0)


def _schedule_lane(topic: ScheduleTopic) -> Lane:
    return ("schedule", topic.schedule_id)


PAGER: Final = CommandKind(
    route="pager",
    topic=PagerTopic,
    address="pager/{number}/action",
    channel="pagerAction",
    document="pager-action.json",
    payload=models.PagerCommand,
    actions=models.PAGER_ACTIONS,
    decoder=msgspec.json.Decoder(models.PagerCommand),
    lane=_pager_lane,
    check=_check_pager,
    description="Commands for one pager. A bare word (`page`) is accepted as the whole payload "
    "too.",
)
BASE: Final = CommandKind(
    route="pager_base",
    topic=BaseTopic,
    address="pager/base/action",
    channel="pagerBaseAction",
    document="pager-base-action.json",
    payload=models.BaseCommand,
    actions=models.BASE_ACTIONS,
    decoder=msgspec.json.Decoder(models.BaseCommand),
    lane=_base_lane,
    check=_nothing_more,
    description="Base-station-wide commands.",
)
SCHEDULE: Final = CommandKind(
    route="schedule",
    topic=ScheduleTopic,
    address="schedule/{schedule_id}/timerange",
    channel="scheduleTimerange",
    document="schedule-timerange.json",
    payload=models.TimerangeCommand,
    actions=models.SCHEDULE_ACTIONS,
    decoder=msgspec.json.Decoder(models.TimerangeCommand),
    lane=_schedule_lane,
    check=_check_interval,
    description="Commands on one Sensaphone.net schedule's time ranges.",
)

COMMANDS: Final = (PAGER, BASE, SCHEDULE)
BY_TOPIC: Final[dict[type, CommandKind]] = {kind.topic: kind for kind in COMMANDS}
BY_ROUTE: Final[dict[str, CommandKind]] = {kind.route: kind for kind in COMMANDS}


def kind_of(target: CommandTopic) -> CommandKind:
    return BY_TOPIC[type(target)]
