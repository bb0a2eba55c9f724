"""The T7470's CoAP resources as plain functions: `Request` in, `Response` out, on a device.

`bridge.sim.pager.server` mounts `DeviceResources.routes()` on an aiocoap `Site` (a thin `Resource`
adapter turns each `aiocoap.Message` into a `Request` and the `Response` back into a message)
and adds Observe, the fault controls and the server lifecycle. `Request` and `Response` are
plain values, not a codec: aiocoap encodes and decodes every packet. The handlers do no I/O.
Bodies must be compact JSON with Content-Format 50; every refusal answers
`{"error": "<why>"}` (see `bridge.sim.pager.server` for the list).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec
from aiocoap.numbers import ContentFormat
from aiocoap.numbers.codes import Code

from bridge.contract import t7470
from bridge.sim.pager.device import DeviceError, PagerDevice

_T = TypeVar("_T")
Received = tuple[int, str, str | None]  # number, CoAP method, action ("alert" for /v1/page)

# The dotted codes a DeviceError carries (every code the device answers with).
_CODES: Final = {
    code.dotted: code
    for code in (
        Code.CREATED,
        Code.DELETED,
        Code.VALID,
        Code.CHANGED,
        Code.CONTENT,
        Code.BAD_REQUEST,
        Code.NOT_FOUND,
        Code.METHOD_NOT_ALLOWED,
        Code.UNSUPPORTED_CONTENT_FORMAT,
    )
}
_CREATE = msgspec.json.Decoder(t7470.CreateSession)
_UPDATE = msgspec.json.Decoder(t7470.UpdateSession)
_PAGE = msgspec.json.Decoder(t7470.StandalonePage)
_SETTINGS = msgspec.json.Decoder(t7470.DeviceSettings)
_WHITESPACE: Final = frozenset(b" \t\r\n")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as a handler sees it (what the adapter read from the `aiocoap.Message`)."""

    code: Code
    query: tuple[str, ...] = ()
    payload: bytes = b""
    content_format: int | None = None
    etags: tuple[bytes, ...] = ()


@dataclass(slots=True)
class Response:
    """A handler's answer, turned into an `aiocoap.Message` by the adapter."""

    code: Code
    payload: bytes = b""
    content_format: int | None = None
    etag: bytes | None = None


Handler = Callable[[Request], Response]


class DeviceResources:
    """Handlers for every resource but /v1/notify. `broadcast` sends observers a notification."""

    def __init__(
        self,
        device: PagerDevice,
        broadcast: Callable[[bytes], None],
        received: collections.deque[Received],
    ) -> None:
        self.device = device
        self._broadcast = broadcast
        self.received = received

    def routes(self) -> list[tuple[tuple[str, ...], Handler]]:
        return [
            (("v1", "sessions"), self._sessions),
            (("v1", "sessions", "history"), self._history),
            (("v1", "sessions", "statistics"), self._statistics),
            (("v1", "page"), self._page),
            (("v1", "settings"), self._settings),
        ]

    def _log(self, number: int | None, method: str, action: str | None) -> None:
        if number is not None:
            self.received.append((number, method, action))

    def _sessions_reply(self, code: Code, sessions: list[t7470.Session]) -> Response:
        stats = self.device.statistics()
        envelope = self.device.envelope(
            ["sessions", "statistics"], sessions=sessions, statistics=stats
        )
        return reply(code, envelope)

    def _changed(self, code: Code, sessions: list[t7470.Session]) -> Response:
        """The reply to a change; its body is also the observers' notification of it."""
        response = self._sessions_reply(code, sessions)
        if sessions:
            self._broadcast(response.payload)
        return response

    def _sessions(self, request: Request) -> Response:
        number = _number(request, self.device)
        method = request.code
        if method == Code.GET:
            return self._get_sessions(request, number)
        if method == Code.POST:
            body = _body(request, _CREATE)
            self._log(body.number, "POST", body.action)
            return self._changed(Code.CREATED, self.device.create(body))
        if method == Code.PUT:
            if number is None:
                raise DeviceError("4.00", "query parameter number is required")
            update = _body(request, _UPDATE)
            self._log(number, "PUT", update.action)
            return self._changed(Code.CHANGED, self.device.update(number, update))
        if method == Code.DELETE:
            self._log(number, "DELETE", None)
            ended = self.device.clear_all() if number is None else self.device.delete(number)
            return self._changed(Code.DELETED, ended)
        raise DeviceError("4.05", "method not allowed on /v1/sessions")

    def _get_sessions(self, request: Request, number: int | None) -> Response:
        if number is not None:
            self._log(number, "GET", None)
            return self._sessions_reply(Code.CONTENT, self.device.sessions(number))
        etag = self.device.etag
        if etag in request.etags:
            return Response(Code.VALID, etag=etag)
        answer = self._sessions_reply(Code.CONTENT, self.device.sessions())
        answer.etag = etag
        return answer

    def _history(self, request: Request) -> Response:
        if request.code == Code.GET:
            history = list(self.device.history)
            return reply(
                Code.CONTENT, self.device.envelope(["session_history"], session_history=history)
            )
        if request.code == Code.DELETE:
            self.device.clear_history()
            return Response(Code.DELETED)
        raise DeviceError("4.05", "method not allowed on /v1/sessions/history")

    def _statistics(self, request: Request) -> Response:
        if request.code == Code.GET:
            statistics = self.device.statistics()
            code = Code.CONTENT
        elif request.code == Code.DELETE:
            statistics = self.device.clear_statistics()
            code = Code.DELETED
        else:
            raise DeviceError("4.05", "method not allowed on /v1/sessions/statistics")
        return reply(code, self.device.envelope(["statistics"], statistics=statistics))

    def _page(self, request: Request) -> Response:
        if request.code != Code.POST:
            raise DeviceError("4.05", "method not allowed on /v1/page")
        body = _body(request, _PAGE)
        self._log(body.number, "POST", "alert")
        self.device.standalone_page(body)
        return Response(Code.CHANGED)

    def _settings(self, request: Request) -> Response:
        if request.code == Code.GET:
            settings = self.device.current_settings()
            return reply(Code.CONTENT, self.device.envelope(["settings"], settings=settings))
        if request.code == Code.POST:
            settings = self.device.update_settings(_body(request, _SETTINGS))
            envelope = self.device.envelope(["settings"], settings=settings)
            payload = t7470.encode(envelope)
            self._broadcast(payload)
            return Response(Code.CHANGED, payload, ContentFormat.JSON)
        raise DeviceError("4.05", "method not allowed on /v1/settings")


def reply(code: Code, envelope: t7470.Envelope) -> Response:
    return Response(code, t7470.encode(envelope), ContentFormat.JSON)


def error(exc: DeviceError) -> Response:
    body = msgspec.json.encode({"error": exc.message})
    return Response(_CODES[exc.code], body, ContentFormat.JSON)


def notify_action(request: Request, *, observable: bool) -> str | None:
    action = query(request).get("action")
    if not observable:
        raise DeviceError("4.04", "Observe is not available on this transmitter")
    if request.code != Code.GET:
        raise DeviceError("4.05", "method not allowed on /v1/notify")
    if action not in (None, "get_sessions"):
        raise DeviceError("4.00", f"unknown action {action!r} (expected get_sessions)")
    return action


def query(request: Request) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in request.query)


def _number(request: Request, device: PagerDevice) -> int | None:
    text = query(request).get("number")
    if text is None:
        return None
    if not text.isdigit():
        raise DeviceError("4.00", f"number must be a positive integer, got {text!r}")
    return device.check_number(int(text))


def _body(request: Request, decoder: msgspec.json.Decoder[_T]) -> _T:
    payload = request.payload
    if not payload:
        raise DeviceError("4.00", "request body is required")
    if request.content_format != ContentFormat.JSON:
        raise DeviceError("4.15", "request body must have Content-Format 50 (application/json)")
    if not is_compact(payload):
        raise DeviceError("4.00", "request body must be compact JSON")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise DeviceError("4.00", f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DeviceError("4.00", f"request body is not valid JSON: {exc}") from None


def is_compact(payload: bytes) -> bool:
    """True when no whitespace appears outside JSON strings (what the device demands)."""
    if not _WHITESPACE.intersection(payload):
        return True
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _WHITESPACE:
            return False
    return True
