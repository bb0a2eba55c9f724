"""How both device readers take a number an upstream may have written as text."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.contract.lenient import as_int, as_number


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (66, 66),
        ("66", 66),
        (" 66 ", 66),
        ("66.0", 66),
        (66.0, 66),
        ("123456789012345678901234567890", 123456789012345678901234567890),  # not rounded
        ("66.5", None),
        (66.5, None),
        (True, None),
        ("sixty-six", None),
        (None, None),
        ([66], None),
    ],
)
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        ("2.5", 2.5),
        (2.5, 2.5),
        ("nan", None),
        ("inf", None),
        (10**400, None),
        (False, None),
        ("many", None),
        ({}, None),
    ],
)
def test_as_number(value: Any, expected: float | None) -> None:
    assert as_number(value) == expected
