"""Numbers as an upstream may write them: the one reading both device readers share.

The T7470 (bridge.pager.t7470_read) and Sensaphone (bridge.schedules.replies) replies are read
tolerantly: a number written as text is a number, anything else is as good as absent. Pure.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


def as_int(value: Any) -> int | None:
    """An integer, or one written as text ("58381", "58381.0"); anything else (booleans
    included) is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)  # exactly, however long: float() would round it
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def as_number(value: Any) -> float | None:
    """A finite number, or one written as text; anything else (booleans included) is None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
