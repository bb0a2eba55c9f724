"""What a handler of `bridge.sim.coap_server` sees: `Request` in, `Response` out.

`parse_request` turns a decoded CoAP request into a `Request` (and its Block2 option), or raises
`Refusal` with the answer RFC 7252 prescribes: 4.02 Bad Option for an unrecognised critical
option (§5.4.1) or an unreadable Block option, 5.05 for Proxy-Uri/Proxy-Scheme (§5.7.2), 4.00
for a Uri-Path or Uri-Query that is not UTF-8, and 4.13 with Size1 for a request body sent
block-wise (RFC 7959 §2.9.3: the T7470's bodies are small, Block1 is not supported).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from bridge.coapwire import (
    ACCEPT,
    BAD_OPTION,
    BAD_REQUEST,
    BLOCK1,
    BLOCK2,
    CONTENT_FORMAT,
    ETAG,
    OBSERVE,
    PROXY_SCHEME,
    PROXY_URI,
    REQUEST_ENTITY_TOO_LARGE,
    SIZE1,
    URI_HOST,
    URI_PATH,
    URI_PORT,
    URI_QUERY,
    CoapFormatError,
    Message,
    parse_block,
    to_uint,
    uint,
)

PROXYING_NOT_SUPPORTED: Final = 165  # 5.05
MAX_BODY: Final = 1024  # the largest request body taken in one piece
_ACCEPTED_CRITICAL: Final = frozenset((URI_HOST, URI_PORT, ACCEPT, BLOCK1, BLOCK2))
# uint(50) and friends, built once: most responses carry Content-Format 50.
_UINTS: Final = tuple(uint(n) for n in range(256))

Options = list[tuple[int, bytes]]
Block = tuple[int, bool, int]  # num, more, szx


class Request:
    """One request as a handler sees it. `port` is the client's UDP source port."""

    __slots__ = ("code", "content_format", "etags", "observe", "path", "payload", "port", "query")

    def __init__(
        self,
        code: int,
        path: tuple[str, ...],
        query: tuple[str, ...] = (),
        payload: bytes = b"",
        content_format: int | None = None,
        etags: tuple[bytes, ...] = (),
        observe: int | None = None,
        port: int = 0,
    ) -> None:
        self.code = code
        self.path = path
        self.query = query
        self.payload = payload
        self.content_format = content_format
        self.etags = etags
        self.observe = observe
        self.port = port


class Response:
    """A handler's answer. `observe` is set by the server on registrations and notifications."""

    __slots__ = ("code", "content_format", "etag", "observe", "payload")

    def __init__(
        self,
        code: int,
        payload: bytes = b"",
        content_format: int | None = None,
        etag: bytes | None = None,
    ) -> None:
        self.code = code
        self.payload = payload
        self.content_format = content_format
        self.etag = etag
        self.observe: int | None = None


Handler = Callable[[Request], Response]


class Refusal(Exception):
    """A request the server answers itself, before any handler sees it."""

    def __init__(self, code: int, payload: bytes, options: Options | None = None) -> None:
        super().__init__(payload.decode())
        self.code = code
        self.payload = payload
        self.options: Options = options or []


def parse_request(message: Message, port: int) -> tuple[Request, Block | None]:
    """The request in `message` and its Block2 option; raises Refusal (see the module doc)."""
    path: list[bytes] = []
    query: list[bytes] = []
    etags: list[bytes] = []
    other: dict[int, bytes] = {}  # the options that may appear once (a repeat: the last wins)
    for number, value in message.options:
        if number == URI_PATH:
            path.append(value)
        elif number == URI_QUERY:
            query.append(value)
        elif number == ETAG:
            etags.append(value)
        else:
            other[number] = value
    block2 = _check(other) if other else None
    content_format = other.get(CONTENT_FORMAT)
    observe = other.get(OBSERVE)
    try:
        request = Request(
            message.code,
            tuple(map(bytes.decode, path)),
            tuple(map(bytes.decode, query)),
            message.payload,
            None if content_format is None else to_uint(content_format),
            tuple(etags),
            None if observe is None else to_uint(observe),
            port,
        )
    except UnicodeDecodeError:
        raise Refusal(BAD_REQUEST, b"Uri-Path and Uri-Query must be UTF-8") from None
    return request, block2


def _check(options: dict[int, bytes]) -> Block | None:
    """Refuse what cannot be served; returns the Block2 option, if any."""
    for number in options:
        if number & 1 and number not in _ACCEPTED_CRITICAL:
            _refuse_option(number)
    try:
        block1 = options.get(BLOCK1)
        if block1 is not None and parse_block(block1)[:2] != (0, False):
            size1 = [(SIZE1, uint(MAX_BODY))]
            raise Refusal(REQUEST_ENTITY_TOO_LARGE, b"request body too large", size1)
        block2 = options.get(BLOCK2)
        return None if block2 is None else parse_block(block2)
    except CoapFormatError as exc:
        raise Refusal(BAD_OPTION, str(exc).encode()) from None


def _refuse_option(number: int) -> None:
    if number in (PROXY_URI, PROXY_SCHEME):
        raise Refusal(PROXYING_NOT_SUPPORTED, b"not a proxy")
    raise Refusal(BAD_OPTION, f"unrecognised critical option {number}".encode())


def options_of(response: Response) -> Options:
    """The options of a whole (not block-wise) response, in ascending order."""
    options = []
    if response.etag is not None:
        options.append((ETAG, response.etag))
    if response.observe is not None:
        options.append((OBSERVE, uint(response.observe)))
    if response.content_format is not None:
        options.append((CONTENT_FORMAT, small_uint(response.content_format)))
    return options


def small_uint(value: int) -> bytes:
    """`uint(value)`, from a table for the values below 256."""
    return _UINTS[value] if value < 256 else uint(value)
