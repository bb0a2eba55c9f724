"""The Sensaphone timerange `interval` bitmap and its readable form. Pure: no I/O.

Bit 1 is the low-order bit (value 1), as in the Sensaphone docs:

    value   bit  meaning
    1..64   1-7  Sunday .. Saturday (a "timestamp" range matches on these days)
    128     8    holiday
    256     9    datetime: interpret start/end as datetimes, not times of day
    512     10   repeat daily            (only one repeat bit may be set)
    1024    11   repeat weekly
    2048    12   repeat yearly, by day number
    4096    13   repeat yearly, by day of week
    8192    14   invert: the range is the time NOT selected
    16384   15   reserved (refused)

The default value, 127, is every day of the week.

A *valid* value is an int in 0..16383 with at most one repeat bit, and no repeat bit unless the
datetime bit is set: the docs list the repeat bits as "Datetime:" options, so a repeat on a
plain time-of-day range has no documented meaning and is refused rather than passed on.
The holiday bit, although also listed under "Datetime:", is accepted either way: it marks the
range's days rather than changing how start/end are read, and refusing it could reject values
the Sensaphone apps themselves write. Every valid value round-trips through the readable form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

import msgspec

from bridge.errors import InvalidPayload

Day = Literal["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
Repeat = Literal["daily", "weekly", "yearly_day_number", "yearly_day_of_week"]

DAYS: Final[tuple[Day, ...]] = get_args(Day)
REPEATS: Final[tuple[Repeat, ...]] = get_args(Repeat)

DEFAULT_INTERVAL: Final = 127
HOLIDAY: Final = 1 << 7
DATETIME: Final = 1 << 8
_REPEAT_BITS: Final[dict[Repeat, int]] = {r: 1 << (9 + i) for i, r in enumerate(REPEATS)}
REPEAT_MASK: Final = sum(_REPEAT_BITS.values())
INVERT: Final = 1 << 13
RESERVED: Final = 1 << 14
LIMIT: Final = 1 << 15


class Interval(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The readable form of an interval bitmap. `days` is published in week order, sun..sat."""

    days: list[Day]
    holiday: bool = False
    datetime: bool = False
    repeat: Repeat | None = None
    invert: bool = False


def check_interval(value: int) -> int:
    """Return `value` if it is a valid bitmap, else raise InvalidPayload saying why."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"interval: expected an integer, got {type(value).__name__}")
    if value < 0 or value >= LIMIT:
        raise InvalidPayload(f"interval: {value} is out of range (0 to {RESERVED - 1})")
    if value & RESERVED:
        raise InvalidPayload(f"interval: {value} sets bit 15 (16384), which is reserved")
    repeats = [name for name, bit in _REPEAT_BITS.items() if value & bit]
    if len(repeats) > 1:
        raise InvalidPayload(
            f"interval: {value} sets more than one repeat bit ({', '.join(repeats)}); "
            "a range repeats in one way only"
        )
    if repeats and not value & DATETIME:
        raise InvalidPayload(
            f"interval: {value} sets repeat {repeats[0]} without the datetime bit (256); "
            "repeats apply only to datetime ranges"
        )
    return value


def decode_interval(value: int) -> Interval:
    """The readable form of a valid bitmap; raises InvalidPayload for an invalid one."""
    check_interval(value)
    repeat = next((name for name, bit in _REPEAT_BITS.items() if value & bit), None)
    return Interval(
        days=[day for i, day in enumerate(DAYS) if value & (1 << i)],
        holiday=bool(value & HOLIDAY),
        datetime=bool(value & DATETIME),
        repeat=repeat,
        invert=bool(value & INVERT),
    )


def encode_interval(form: Interval) -> int:
    """The bitmap of a readable form. Raises InvalidPayload for unknown or repeated days, or
    for a form whose bitmap would be invalid (a repeat without `datetime`)."""
    value = 0
    seen: set[str] = set()
    for day in form.days:
        if day not in DAYS:
            raise InvalidPayload(f"interval: unknown day {day!r}; expected one of {list(DAYS)}")
        if day in seen:
            raise InvalidPayload(f"interval: day {day!r} is listed twice")
        seen.add(day)
        value |= 1 << DAYS.index(day)
    if form.repeat is not None:
        if form.repeat not in _REPEAT_BITS:
            raise InvalidPayload(f"interval: unknown repeat {form.repeat!r}")
        value |= _REPEAT_BITS[form.repeat]
    value |= (HOLIDAY if form.holiday else 0) | (DATETIME if form.datetime else 0)
    value |= INVERT if form.invert else 0
    return check_interval(value)


def parse_interval(raw: object) -> int:
    """An interval from a payload: the bitmap as an int, or the readable form as a mapping
    (or an `Interval`). Returns the validated bitmap; raises InvalidPayload saying what is wrong
    (reserved or out-of-range bits, contradictory repeats, bad days, unknown keys, wrong types).
    """
    if isinstance(raw, Interval):
        return encode_interval(raw)
    if isinstance(raw, Mapping):
        try:
            form = msgspec.convert(raw, Interval)
        except msgspec.ValidationError as exc:
            raise InvalidPayload(f"interval: {_describe(exc)}") from None
        return encode_interval(form)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return check_interval(raw)
    raise InvalidPayload(
        f"interval: expected an integer bitmap or an object like {{'days': ['mon']}}, "
        f"got {type(raw).__name__}"
    )


def default_interval() -> Interval:
    """The readable form of the documented default, 127 (every day)."""
    return decode_interval(DEFAULT_INTERVAL)


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says e.g. "Invalid enum value 'xyz' - at `$.days[0]`"; lead with the field.
    what, sep, where = str(exc).rpartition(" - at `")
    if not sep:
        return str(exc)
    field = where.rstrip("`").removeprefix("$").removeprefix(".") or "(top level)"
    return f"{field}: {what}"
