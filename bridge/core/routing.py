"""Pure routing: an inbound topic and payload become one typed request, or a BridgeError.

No I/O here. Every limit is enforced before any work is done: payload size, JSON shape and types
(msgspec), then the limits that depend on configuration (pager number range, pageMode allow-list,
label and message length). What each command topic takes is in the command table
(bridge.contract.commands).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from bridge.config import LimitSettings, PagerSettings
from bridge.contract import models
from bridge.contract.commands import CommandKind, Lane, kind_of
from bridge.contract.topics import CommandTopic, Topics
from bridge.errors import BridgeError, InvalidPayload, UnknownAction

_LENIENT = msgspec.json.Decoder()
_BARE_WORD = re.compile(rb"[a-z_]{1,32}")
T = TypeVar("T")


class Request(msgspec.Struct, frozen=True):
    """A validated command, what it addresses and its kind (bridge.contract.commands). `key`
    orders work: same key, same lane."""

    target: CommandTopic
    command: models.Command
    key: Lane
    kind: CommandKind


class Router:
    """Validates inbound messages against the contract and this site's limits."""

    __slots__ = ("_limits", "_pager", "topics")

    def __init__(self, topics: Topics, pager: PagerSettings, limits: LimitSettings) -> None:
        self.topics = topics
        self._pager = pager
        self._limits = limits

    def route(self, topic: str, payload: bytes) -> Request:
        """Raise InvalidTopic, InvalidPayload or UnknownAction; never anything else."""
        target = self.topics.parse(topic)
        if not payload.strip():
            raise InvalidPayload("empty payload: send a JSON object or a bare action word")
        if len(payload) > self._limits.max_payload:
            raise InvalidPayload(
                f"payload is {len(payload)} bytes; the limit is {self._limits.max_payload}"
            )
        kind = kind_of(target)
        command: models.Command = _decode(kind.decoder, _bare_word(payload), kind.actions)
        kind.check(command, self._pager)
        return Request(target, command, kind.lane(target), kind)

    def attempted(self, topic: str, payload: bytes) -> tuple[str, str]:
        """Best-effort metric labels (route, action) of a command that did not validate: what
        it tried, where that can be read, else "invalid" / "none". From fixed sets only."""
        try:
            target = self.topics.parse(topic)
        except BridgeError:
            return "invalid", "none"
        kind = kind_of(target)
        word = _bare_word(payload[: self._limits.max_payload])
        action = _peek(word, "action")
        return kind.route, action if action in kind.actions else "none"


def _bare_word(payload: bytes) -> bytes:
    """`page` (or `"page"`) is accepted as `{"action":"page"}`."""
    word = payload.strip()
    if word.startswith(b'"') and word.endswith(b'"'):
        word = word[1:-1]
    if _BARE_WORD.fullmatch(word):
        return b'{"action":"' + word + b'"}'
    return payload


def _decode(decoder: msgspec.json.Decoder[T], payload: bytes, actions: tuple[str, ...]) -> T:
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise _explain(exc, payload, actions) from None
    except RecursionError:
        raise InvalidPayload("payload is nested too deeply to be read") from None
    except UnicodeDecodeError as exc:
        # msgspec raises this, not DecodeError, for invalid UTF-8 inside a JSON string.
        raise InvalidPayload(f"payload is not UTF-8 (byte {exc.start})") from None


def _explain(exc: msgspec.DecodeError, payload: bytes, actions: tuple[str, ...]) -> BridgeError:
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            return InvalidPayload(f"payload is not UTF-8 (byte {bad.start})")
        return InvalidPayload(f"payload is not valid JSON: {text}")
    if "`$.action`" in text or text.startswith("Object missing required field `action`"):
        action = _peek(payload, "action")
        if isinstance(action, str) and action not in actions:
            return UnknownAction(
                f"unknown action {action[:40]!r}; expected one of: {', '.join(actions)}"
            )
        if action is None:
            return InvalidPayload(f"missing field `action`; expected one of: {', '.join(actions)}")
    if text.startswith("Expected `object`"):
        return InvalidPayload("payload must be a JSON object or a bare action word")
    return InvalidPayload(_humanize(text))


def _humanize(text: str) -> str:
    # msgspec: "Expected `int`, got `str` - at `$.goal`" -> "goal: expected `int`, got `str`"
    what, sep, where = text.rpartition(" - at `")
    if not sep:
        return text
    field = where.rstrip("`").removeprefix("$").removeprefix(".")
    return f"{field}: {what[:1].lower()}{what[1:]}"


def _peek(payload: bytes, field: str) -> Any:
    try:
        data = _LENIENT.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec recurses once per level of nesting: about 1,000 levels (4 KB of brackets)
        # exhaust the stack. Such a payload has no field to read.
        return None
    return data.get(field) if isinstance(data, dict) else None


def transaction_of(payload: bytes) -> str | int | None:
    """Best effort, for error results of payloads that did not validate."""
    value = _peek(payload, "transaction")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value[:128] if isinstance(value, str) else value
