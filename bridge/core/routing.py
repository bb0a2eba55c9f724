"""Pure routing: an inbound topic and payload become one typed request, or a BridgeError.

No I/O here. Every limit is enforced before any work is done: payload size, JSON shape and types
(msgspec), then the limits that depend on configuration (pager number range, pageMode allow-list,
label and message length).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from bridge.config import LimitSettings, PagerSettings
from bridge.contract import models
from bridge.contract.interval import Interval, encode_interval, parse_interval
from bridge.contract.topics import BaseTopic, CommandTopic, PagerTopic, ScheduleTopic, Topics
from bridge.errors import BridgeError, InvalidPayload, UnknownAction

_PAGER = msgspec.json.Decoder(models.PagerCommand)
_BASE = msgspec.json.Decoder(models.BaseCommand)
_SCHEDULE = msgspec.json.Decoder(models.TimerangeCommand)
_LENIENT = msgspec.json.Decoder()
_BARE_WORD = re.compile(rb"[a-z_]{1,32}")
T = TypeVar("T")
# Metric route label and the actions it accepts, per kind of command topic.
_ROUTES: dict[type, tuple[str, tuple[str, ...]]] = {
    PagerTopic: ("pager", models.PAGER_ACTIONS),
    BaseTopic: ("pager_base", models.BASE_ACTIONS),
    ScheduleTopic: ("schedule", models.SCHEDULE_ACTIONS),
}


class Request(msgspec.Struct, frozen=True):
    """A validated command and what it addresses. `key` orders work: same key, same lane."""

    target: CommandTopic
    command: models.Command
    key: tuple[str, int]


class Router:
    """Validates inbound messages against the contract and this site's limits."""

    __slots__ = ("_limits", "_modes", "_pager", "topics")

    def __init__(self, topics: Topics, pager: PagerSettings, limits: LimitSettings) -> None:
        self.topics = topics
        self._pager = pager
        self._limits = limits
        self._modes = frozenset(pager.page_modes)

    def route(self, topic: str, payload: bytes) -> Request:
        """Raise InvalidTopic, InvalidPayload or UnknownAction; never anything else."""
        target = self.topics.parse(topic)
        if not payload.strip():
            raise InvalidPayload("empty payload: send a JSON object or a bare action word")
        if len(payload) > self._limits.max_payload:
            raise InvalidPayload(
                f"payload is {len(payload)} bytes; the limit is {self._limits.max_payload}"
            )
        payload = _bare_word(payload)
        match target:
            case PagerTopic(number=number):
                command: models.Command = _decode(_PAGER, payload, models.PAGER_ACTIONS)
                self._check_pager(command)
                return Request(target, command, ("pager", number))
            case BaseTopic():
                command = _decode(_BASE, payload, models.BASE_ACTIONS)
                return Request(target, command, ("pager", 0))
            case ScheduleTopic(schedule_id=schedule_id):
                command = _decode(_SCHEDULE, payload, models.SCHEDULE_ACTIONS)
                interval = getattr(command, "interval", None)
                # Refuse the reserved bit and contradictory forms before any work is done.
                if isinstance(interval, int):
                    parse_interval(interval)
                elif isinstance(interval, Interval):
                    encode_interval(interval)
                return Request(target, command, ("schedule", schedule_id))

    def attempted(self, topic: str, payload: bytes) -> tuple[str, str]:
        """Best-effort metric labels (route, action) of a command that did not validate: what
        it tried, where that can be read, else "invalid" / "none". From fixed sets only."""
        try:
            target = self.topics.parse(topic)
        except BridgeError:
            return "invalid", "none"
        route, actions = _ROUTES[type(target)]
        word = _bare_word(payload[: self._limits.max_payload])
        action = _peek(word, "action")
        return route, action if action in actions else "none"

    def _check_pager(self, command: models.Command) -> None:
        mode = getattr(command, "pageMode", None)
        if mode is not None and mode not in self._modes:
            allowed = ", ".join(sorted(self._modes))
            raise InvalidPayload(f"pageMode {mode[:64]!r} is not allowed; use one of: {allowed}")
        label = getattr(command, "label", None)
        if label is not None and len(label) > self._pager.max_label:
            raise InvalidPayload(
                f"label is {len(label)} characters; the limit is {self._pager.max_label}"
            )
        message = getattr(command, "message", None)
        if message is not None and len(message) > self._pager.max_message:
            raise InvalidPayload(
                f"message is {len(message)} characters; the limit is {self._pager.max_message}"
            )


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
