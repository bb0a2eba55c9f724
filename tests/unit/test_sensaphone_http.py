"""Reading Sensaphone's replies: what is not a result envelope is said to be so, never raised."""

from __future__ import annotations

from bridge.schedules.transport import parse_envelope

OK = b'{"result":{"success":true,"code":0,"message":"ok"},"response":'


def test_a_reply_nested_too_deep_is_not_an_envelope() -> None:
    """msgspec recurses once per level: 5,000 levels used to raise RecursionError out of the
    Sensaphone client instead of 'reply is not a result envelope'."""
    assert parse_envelope(OK + b"[" * 5000 + b"]" * 5000 + b"}") is None
    assert parse_envelope(OK + b"[[[]]]}") is not None


def test_other_shapes_are_not_envelopes() -> None:
    assert parse_envelope(b"<html>502 Bad Gateway</html>") is None
    assert parse_envelope(b'{"result": "ok"}') is None
    assert parse_envelope(b"") is None
