"""The schedule feature: `schedule/<id>/timerange` commands as Sensaphone.net calls.

The schedule's parent (a device's default or device schedule, or a user's contact schedule) comes
from the command (`device_id`, or `user_id` + `contact_id`) or else from configuration. After each
successful change the schedule is read back and published, retained, on `schedule/<id>/timeranges`
with every interval also decoded.

Ranges reach MQTT (the retained state, the result's `timeranges` and `changed`) as Sensaphone
sent them, fields nobody documented included; only `range_id` and `interval` are numbers even
when Sensaphone wrote them as text (bridge.schedules.replies). The documented fields are those of
`models.TimeRangeOut`, whose schema allows others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from bridge.config import SensaphoneSettings
from bridge.contract import models
from bridge.contract.interval import Interval, decode_interval, encode_interval, parse_interval
from bridge.contract.topics import Topics
from bridge.core.outbox import Outbound, Outbox, Publish, deliver
from bridge.errors import BridgeError, InvalidPayload, NotConfigured
from bridge.schedules.sensaphone import Parent, SensaphoneClient, TimeRange

log = logging.getLogger(__name__)


class ScheduleService:
    """Carries out timerange commands and republishes each schedule's ranges."""

    def __init__(
        self,
        client: SensaphoneClient,
        publish: Publish,
        topics: Topics,
        settings: SensaphoneSettings,
    ) -> None:
        self._client = client
        self._publish = publish
        self._topics = topics
        self._account = bool(settings.user)
        self._configured = {
            int(key): Parent.from_settings(value) for key, value in settings.schedules.items()
        }
        # One change or read of a schedule at a time, commands and start-up reads alike, so a
        # slow read can never publish ranges older than a change that finished after it.
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, schedule_id: int) -> asyncio.Lock:
        lock = self._locks.get(schedule_id)
        if lock is None:
            lock = self._locks[schedule_id] = asyncio.Lock()
        return lock

    async def refresh(self) -> None:
        """Read every configured schedule and publish its retained ranges (at start-up and after
        every reconnect), so subscribers such as Home Assistant have values from the first
        minute, not from the first `read` someone sends. Failures are logged, not raised."""
        if not self._account:
            return
        for schedule_id, parent in self._configured.items():
            try:
                async with self._lock(schedule_id):
                    ranges = await self._client.read(schedule_id, parent)
                    await self._announce(schedule_id, ranges, None)
            except BridgeError as exc:
                log.warning("schedule %d could not be read at start-up: %s", schedule_id, exc)

    async def execute(self, schedule_id: int, command: models.Command, box: Outbox) -> Any:
        """Carry out one timerange command; return the result's `data`. The schedule's ranges
        are republished through the command's `box`."""
        if not isinstance(command, models.ScheduleCommand):
            raise InvalidPayload(f"not a timerange command: {type(command).__name__}")
        if not self._account:
            # A configuration problem, not a bad topic nor an unreachable upstream: the topic
            # is right, and the site has no Sensaphone account to carry it out with.
            raise NotConfigured(
                "this site has no Sensaphone account (sensaphone.user is not set): "
                "schedule commands cannot be carried out"
            )
        parent = self.parent_of(schedule_id, command)
        async with self._lock(schedule_id):
            return await self._carry_out(schedule_id, parent, command, box)

    async def _carry_out(
        self, schedule_id: int, parent: Parent, command: models.ScheduleCommand, box: Outbox
    ) -> Any:
        match command:
            case models.ReadRanges():
                ranges = await self._client.read(schedule_id, parent)
                await self._announce(schedule_id, ranges, box)
                return {"timeranges": _ranges_out(ranges)}
            case models.CreateRange():
                created = await self._client.create(schedule_id, parent, _range_of(command))
            case models.UpdateRange():
                if command.start is None and command.end is None and command.interval is None:
                    raise InvalidPayload("update needs at least one of start, end, interval")
                created = await self._client.update(schedule_id, parent, _range_of(command))
            case models.DeleteRange():
                created = await self._client.delete(schedule_id, parent, command.range_id)
            case _:
                raise InvalidPayload(f"not a timerange command: {type(command).__name__}")
        after = await self._read_back(schedule_id, parent, box)
        data: dict[str, Any] = {"changed": [r.wire() for r in created]}
        if after is not None:
            data["timeranges"] = _ranges_out(after)
        return data

    def parent_of(self, schedule_id: int, command: models.ScheduleCommand) -> Parent:
        """The schedule's parent: the configured one for a configured schedule (a payload
        naming another is refused: a publisher must not redirect the bridge to a device the
        operator did not give it), else the payload's, else an error."""
        named = _named_parent(command)
        configured = self._configured.get(schedule_id)
        if configured is not None:
            if named is not None and named != configured:
                raise InvalidPayload(
                    f"schedule {schedule_id} is configured with its parent "
                    f"({_describe(configured)}); the payload names {_describe(named)}: refused"
                )
            return configured
        if named is None:
            raise InvalidPayload(
                f"schedule {schedule_id} has no configured parent; send device_id, "
                "or user_id and contact_id, or configure sensaphone.schedules"
            )
        return named

    async def _read_back(
        self, schedule_id: int, parent: Parent, box: Outbox
    ) -> list[TimeRange] | None:
        try:
            ranges = await self._client.read(schedule_id, parent)
        except BridgeError as exc:
            # The change itself succeeded; only the republication is missing. Say so in the log.
            log.warning("schedule %d changed but could not be read back: %s", schedule_id, exc)
            return None
        await self._announce(schedule_id, ranges, box)
        return ranges

    async def _announce(
        self, schedule_id: int, ranges: list[TimeRange], box: Outbox | None
    ) -> None:
        doc = {"schedule_id": schedule_id, "timeranges": _ranges_out(ranges)}
        out = [
            Outbound(self._topics.schedule_ranges(schedule_id), models.ENCODER.encode(doc), True)
        ]
        await deliver(out, box, self._publish)


def _named_parent(command: models.ScheduleCommand) -> Parent | None:
    """The parent a command's payload names, if any."""
    device, user, contact = command.device_id, command.user_id, command.contact_id
    if device is not None and (user is not None or contact is not None):
        raise InvalidPayload("give either device_id or user_id + contact_id, not both")
    if device is not None:
        return Parent(kind="default_schedule", device_id=device, user_id=None, contact_id=None)
    if user is not None or contact is not None:
        if user is None or contact is None:
            raise InvalidPayload("a contact schedule needs both user_id and contact_id")
        return Parent(kind="contact_schedule", device_id=None, user_id=user, contact_id=contact)
    return None


def _describe(parent: Parent) -> str:
    if parent.kind == "contact_schedule":
        return f"user {parent.user_id}, contact {parent.contact_id}"
    return f"{parent.kind.replace('_', ' ')} of device {parent.device_id}"


def _interval_value(value: int | Interval | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, Interval):
        return encode_interval(value)
    return parse_interval(value)


def _range_of(command: models.CreateRange | models.UpdateRange) -> TimeRange:
    range_id = command.range_id if isinstance(command, models.UpdateRange) else None
    return TimeRange(
        range_id=range_id,
        start=command.start,
        end=command.end,
        interval=_interval_value(command.interval),
    )


def _ranges_out(ranges: list[TimeRange]) -> list[dict[str, Any]]:
    """Each range as sent, plus `interval_decoded` when its interval is a valid bitmap (the
    contract's name: one Sensaphone might send is replaced, or dropped when ours is absent)."""
    out = []
    for r in ranges:
        item = r.wire()
        item.pop("interval_decoded", None)
        # An interval we cannot read is still published as it came.
        if r.interval is not None and (decoded := _decoded(r.interval)) is not None:
            item["interval_decoded"] = msgspec.to_builtins(decoded)
        out.append(item)
    return out


def _decoded(interval: int) -> Interval | None:
    try:
        return decode_interval(interval)
    except BridgeError:
        return None
