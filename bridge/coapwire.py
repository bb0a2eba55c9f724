"""CoAP message codec (RFC 7252 §3, Block options of RFC 7959 §2.2): bytes <-> `Message`, no I/O.

Shared by the bridge's CoAP client (`bridge.coap`) and the simulator's server, so both read and
write datagrams the same way. Everything here is a pure function of its arguments.

A datagram is a 4-byte header (version 1, type, token length, code, message ID), the token
(0-8 bytes), the options in ascending number order, each coded as the delta from the previous
number and its value length (4-bit nibbles; 13 and 14 announce one or two extension bytes, 15 is
reserved), and optionally 0xFF and a non-empty payload. `decode` refuses anything else with
`CoapFormatError` (RFC 7252 §4.2/§4.3: a message format error, to be rejected or ignored by the
caller); it does not judge option semantics (critical/unknown options, reserved code classes):
that is the endpoint's business.

Codes are plain ints (class << 5 | detail): GET is 1, 2.05 Content is 69; `dotted(69)` is "2.05".
Option values are raw bytes; `uint`/`to_uint` convert the uint-valued ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Final

# Message types (RFC 7252 §3).
CON, NON, ACK, RST = 0, 1, 2, 3

# Option numbers (RFC 7252 §5.10, RFC 7641 §2, RFC 7959 §2.1 and §4).
IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT, LOCATION_PATH = 1, 3, 4, 5, 6, 7, 8
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT, LOCATION_QUERY = 11, 12, 14, 15, 17, 20
BLOCK2, BLOCK1, SIZE2, PROXY_URI, PROXY_SCHEME, SIZE1 = 23, 27, 28, 35, 39, 60

# Codes (RFC 7252 §12.1, RFC 7959 §2.9): the methods, then the responses the bridge meets.
EMPTY, GET, POST, PUT, DELETE = 0, 1, 2, 3, 4
CREATED, DELETED, VALID, CHANGED, CONTENT, CONTINUE = 65, 66, 67, 68, 69, 95
BAD_REQUEST, BAD_OPTION, NOT_FOUND, METHOD_NOT_ALLOWED = 128, 130, 132, 133
REQUEST_ENTITY_INCOMPLETE, PRECONDITION_FAILED, REQUEST_ENTITY_TOO_LARGE = 136, 140, 141
INTERNAL_SERVER_ERROR, NOT_IMPLEMENTED, SERVICE_UNAVAILABLE = 160, 161, 163

# Transmission parameters (RFC 7252 §4.8, the defaults), for every endpoint that sends CONs.
ACK_TIMEOUT: Final = 2.0
ACK_RANDOM_FACTOR: Final = 1.5
MAX_RETRANSMIT: Final = 4
EXCHANGE_LIFETIME: Final = 247.0  # §4.8.2: how long a message ID stays in use

_PAYLOAD_MARKER: Final = 0xFF
_MAX_OPTION_NUMBER: Final = 0xFFFF
_MAX_EXTENDED: Final = 269 + 0xFFFF  # the largest delta or length the 14 nibble can carry
_DOTTED: Final = tuple(f"{code >> 5}.{code & 0x1F:02d}" for code in range(256))
_by_number = itemgetter(0)


class CoapFormatError(ValueError):
    """The bytes are not a well-formed CoAP message (or Block option value)."""


class Message:
    """One decoded CoAP message. Options are (number, value) in ascending number order."""

    __slots__ = ("code", "mid", "mtype", "options", "payload", "token")

    def __init__(
        self,
        mtype: int,
        code: int,
        mid: int,
        token: bytes = b"",
        options: list[tuple[int, bytes]] | None = None,
        payload: bytes = b"",
    ) -> None:
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options: list[tuple[int, bytes]] = [] if options is None else options
        self.payload = payload

    def option(self, number: int) -> bytes | None:
        """The first value of option `number`, or None when it is absent."""
        for num, value in self.options:
            if num == number:
                return value
        return None

    def options_of(self, number: int) -> list[bytes]:
        """Every value of option `number`, in message order (e.g. the Uri-Path segments)."""
        return [value for num, value in self.options if num == number]

    def encode(self) -> bytes:
        """This message as a datagram."""
        return encode(self.mtype, self.code, self.mid, self.token, self.options, self.payload)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.mtype == other.mtype
            and self.code == other.code
            and self.mid == other.mid
            and self.token == other.token
            and self.options == other.options
            and self.payload == other.payload
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"Message(mtype={self.mtype}, code={dotted(self.code)}, mid={self.mid}, "
            f"token={self.token.hex()}, options={self.options!r}, payload={self.payload!r})"
        )


def dotted(code: int) -> str:
    """The code in the RFC's notation: 69 -> "2.05", 1 -> "0.01"."""
    return _DOTTED[code]


def uint(value: int) -> bytes:
    """A uint option value: big-endian, no leading zero bytes, 0 is empty (RFC 7252 §3.2)."""
    if value < 0:
        raise ValueError(f"uint option values are not negative: {value}")
    return value.to_bytes((value.bit_length() + 7) >> 3, "big")


def to_uint(data: bytes) -> int:
    """The value of a uint option (leading zero bytes are tolerated, as §3.2 asks)."""
    return int.from_bytes(data, "big")


def block(num: int, more: bool, szx: int) -> bytes:
    """A Block1/Block2 option value: block number, more flag, size exponent (RFC 7959 §2.2)."""
    if not 0 <= num < 1 << 20:
        raise ValueError(f"block number out of range: {num}")
    if not 0 <= szx <= 6:
        raise ValueError(f"block size exponent out of range: {szx}")
    return uint(num << 4 | (8 if more else 0) | szx)


def parse_block(data: bytes) -> tuple[int, bool, int]:
    """(num, more, szx) of a Block1/Block2 value; the block size is 16 << szx bytes."""
    if len(data) > 3:
        raise CoapFormatError(f"block option longer than 3 bytes: {data.hex()}")
    value = int.from_bytes(data, "big")
    szx = value & 7
    if szx == 7:  # reserved (BERT exists only for CoAP over TCP, RFC 8323)
        raise CoapFormatError("block size exponent 7 is reserved")
    return value >> 4, bool(value & 8), szx


def _extended(value: int) -> tuple[int, bytes]:
    """The 4-bit nibble and extension bytes for an option delta or length."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    if value <= _MAX_EXTENDED:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError(f"option delta or length too large: {value}")


def pack_options(options: Iterable[tuple[int, bytes]], previous: int = 0) -> bytes:
    """The option bytes of `options` (already in ascending order) following option `previous`.

    Lets a caller precompute a run of options it sends often (a request's Uri-Path) once and
    splice it between options it builds per message.
    """
    out = bytearray()
    for number, value in options:
        delta = number - previous
        if delta < 0 or number > _MAX_OPTION_NUMBER:
            raise ValueError(f"option {number} out of order or out of range after {previous}")
        length = len(value)
        if delta < 13 and length < 13:  # the common case: one header byte
            out.append(delta << 4 | length)
        else:
            delta_nibble, delta_ext = _extended(delta)
            length_nibble, length_ext = _extended(length)
            out.append(delta_nibble << 4 | length_nibble)
            out += delta_ext
            out += length_ext
        out += value
        previous = number
    return bytes(out)


def header(mtype: int, code: int, mid: int, token: bytes) -> bytes:
    """The fixed header and token."""
    if not 0 <= mtype <= 3 or not 0 <= code <= 0xFF or not 0 <= mid <= 0xFFFF:
        raise ValueError(f"bad header fields: type {mtype}, code {code}, mid {mid}")
    if len(token) > 8:
        raise ValueError(f"token longer than 8 bytes: {token.hex()}")
    return bytes((0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF)) + token


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: Sequence[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    """One datagram. `options` need not be sorted (stable sort by number keeps repeats' order)."""
    data = header(mtype, code, mid, token)
    if options:
        data += pack_options(sorted(options, key=_by_number))
    if payload:
        data += b"\xff" + payload
    return data


def _extension(data: bytes, pos: int, nibble: int, what: str) -> tuple[int, int]:
    """Resolve an option delta/length nibble; returns (value, position after its bytes)."""
    if nibble == 13:
        if pos >= len(data):
            raise CoapFormatError(f"truncated option {what}")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapFormatError(f"truncated option {what}")
        return (data[pos] << 8 | data[pos + 1]) + 269, pos + 2
    raise CoapFormatError(f"reserved option {what} nibble 15")


def decode(data: bytes) -> Message:
    """Parse one datagram; raises CoapFormatError on anything malformed."""
    if not isinstance(data, bytes):
        data = bytes(data)
    size = len(data)
    if size < 4:
        raise CoapFormatError(f"{size} bytes, shorter than the CoAP header")
    first = data[0]
    if first >> 6 != 1:
        raise CoapFormatError(f"unknown CoAP version {first >> 6}")
    tkl = first & 0x0F
    if tkl > 8:
        raise CoapFormatError(f"reserved token length {tkl}")
    code = data[1]
    if code == EMPTY and size != 4:
        # RFC 7252 §4.1: an Empty message has no token and nothing after the message ID.
        raise CoapFormatError("empty message with a token, options or payload")
    pos = 4 + tkl
    if pos > size:
        raise CoapFormatError("truncated token")
    options, payload = _options(data, pos) if pos < size else ([], b"")
    return Message(first >> 4 & 3, code, data[2] << 8 | data[3], data[4:pos], options, payload)


def _options(data: bytes, pos: int) -> tuple[list[tuple[int, bytes]], bytes]:
    """The options and payload from `pos` on."""
    size = len(data)
    options: list[tuple[int, bytes]] = []
    payload = b""
    number = 0
    while pos < size:
        byte = data[pos]
        pos += 1
        if byte == _PAYLOAD_MARKER:
            if pos == size:
                raise CoapFormatError("payload marker followed by an empty payload")
            payload = data[pos:]
            break
        delta = byte >> 4
        length = byte & 0x0F
        if delta > 12:
            delta, pos = _extension(data, pos, delta, "delta")
        if length > 12:
            length, pos = _extension(data, pos, length, "length")
        number += delta
        end = pos + length
        if end > size:
            raise CoapFormatError(f"option {number} value truncated")
        options.append((number, data[pos:end]))
        pos = end
    if number > _MAX_OPTION_NUMBER:
        raise CoapFormatError(f"option number {number} out of range")
    return options, payload
