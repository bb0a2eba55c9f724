"""The interval bitmap codec: every valid value round-trips, every invalid one is refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.contract.interval import (
    DAYS,
    LIMIT,
    REPEATS,
    Interval,
    check_interval,
    decode_interval,
    default_interval,
    encode_interval,
    parse_interval,
)
from bridge.errors import InvalidPayload

REPEAT_MASK = 512 | 1024 | 2048 | 4096


def is_valid(value: int) -> bool:
    """The contract, restated independently of the codec."""
    repeats = (value & REPEAT_MASK).bit_count()
    return (
        0 <= value < LIMIT
        and not value & 16384
        and repeats <= 1
        and (repeats == 0 or bool(value & 256))
    )


VALID = [v for v in range(LIMIT) if is_valid(v)]
INVALID = [v for v in range(LIMIT) if not is_valid(v)]

valid_values = st.sampled_from(VALID)
invalid_values = st.one_of(
    st.sampled_from(INVALID), st.integers(max_value=-1), st.integers(min_value=LIMIT)
)


@st.composite
def valid_forms(draw: st.DrawFn) -> Interval:
    days = draw(st.lists(st.sampled_from(DAYS), unique=True))
    dt = draw(st.booleans())
    repeat = draw(st.sampled_from(REPEATS)) if dt and draw(st.booleans()) else None
    return Interval(
        days=days,
        holiday=draw(st.booleans()),
        datetime=dt,
        repeat=repeat,
        invert=draw(st.booleans()),
    )


def canonical(form: Interval) -> Interval:
    return msgspec.structs.replace(form, days=[d for d in DAYS if d in form.days])


def test_default_is_every_day() -> None:
    assert decode_interval(127) == Interval(days=list(DAYS))
    assert default_interval() == Interval(days=list(DAYS))
    assert encode_interval(default_interval()) == 127


def test_examples_from_the_docs() -> None:
    assert decode_interval(7).days == ["sun", "mon", "tue"]
    assert decode_interval(256 | 512 | 128 | 8192) == Interval(
        days=[], holiday=True, datetime=True, repeat="daily", invert=True
    )


def test_exhaustive_round_trip() -> None:
    """All 2**15 ints: each valid one round-trips, each invalid one is refused."""
    for value in range(LIMIT):
        if is_valid(value):
            assert encode_interval(decode_interval(value)) == value
            assert parse_interval(value) == value
            assert parse_interval(msgspec.to_builtins(decode_interval(value))) == value
        else:
            with pytest.raises(InvalidPayload, match="interval: "):
                decode_interval(value)
    # Days + holiday (2**8) x invert (2) x {plain, datetime, datetime + one of 4 repeats} (6).
    assert len(VALID) == 2**8 * 2 * 6


@given(valid_values)
def test_encode_decode_round_trip(value: int) -> None:
    assert encode_interval(decode_interval(value)) == value


@given(valid_forms())
def test_decode_encode_round_trip(form: Interval) -> None:
    assert decode_interval(encode_interval(form)) == canonical(form)


@given(valid_forms())
def test_days_are_published_in_week_order(form: Interval) -> None:
    days = decode_interval(encode_interval(form)).days
    assert days == sorted(days, key=DAYS.index)


@given(invalid_values)
def test_invalid_values_are_refused_with_a_message(value: int) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_interval(value)
    assert str(value) in info.value.message
    with pytest.raises(InvalidPayload):
        decode_interval(value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (16384 | 127, "reserved"),
        (-1, "out of range"),
        (LIMIT, "out of range"),
        (256 | 512 | 1024, "more than one repeat"),
        (512 | 127, "without the datetime bit"),
        (True, "expected an integer bitmap"),
        ("127", "expected an integer bitmap"),
        (12.0, "expected an integer bitmap"),
        (None, "expected an integer bitmap"),
        ({"days": ["mon", "mon"]}, "listed twice"),
        ({"days": ["funday"]}, "days[0]"),
        ({"days": ["mon"], "colour": "red"}, "unknown field `colour`"),
        ({"days": "mon"}, "Expected `array`, got `str`"),
        ({"days": ["mon"], "holiday": "yes"}, "holiday"),
        ({"holiday": True}, "missing required field `days`"),
        ({"days": [], "repeat": "daily"}, "without the datetime bit"),
        ({"days": [], "datetime": True, "repeat": "hourly"}, "repeat"),
    ],
)
def test_refusals(raw: Any, message: str) -> None:
    with pytest.raises(InvalidPayload, match=r"^interval: ") as info:
        parse_interval(raw)
    assert message in info.value.message


def test_encode_refuses_a_hand_built_bad_form() -> None:
    with pytest.raises(InvalidPayload, match="listed twice"):
        encode_interval(Interval(days=["sun", "sun"]))
    with pytest.raises(InvalidPayload, match="unknown day"):
        encode_interval(Interval(days=["xyz"]))  # type: ignore[list-item]


def test_readable_form_and_struct_are_accepted() -> None:
    assert parse_interval({"days": ["sat", "sun"], "invert": True}) == 1 | 64 | 8192
    assert parse_interval(Interval(days=["mon"], datetime=True, repeat="weekly")) == 2 | 256 | 1024
    assert check_interval(0) == 0
