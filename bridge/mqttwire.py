"""MQTT 5.0 and 3.1.1 on the wire, client side: encoders for what a client sends and an
incremental decoder for what a server sends. Pure: no I/O, no clock, no logging.

Written from the OASIS specifications (MQTT Version 5.0, 2019, and MQTT Version 3.1.1, 2014) for
what the bridge needs: QoS 0 and 1, no QoS 2, no topic aliases, no enhanced authentication.
Anything else the server sends is a `ProtocolError`, after which the connection must be closed.

    encoders:  connect  subscribe  publish  puback  PINGREQ  disconnect
    decoder:   Decoder(v5).feed(bytes) -> [Connack | Suback | Publish | Puback | Pingresp
                                            | Disconnect]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

MAX_PACKET: Final = 16 * 1024 * 1024  # what we accept, and advertise as Maximum Packet Size
_VARINT_MAX: Final = 268_435_455  # four bytes of seven bits

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ_TYPE, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

# v5 property identifiers (section 2.2.2.2) and how their values are encoded.
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_KINDS: Final = {
    0x01: _BYTE,  # Payload Format Indicator
    0x02: _FOUR,  # Message Expiry Interval
    0x03: _STRING,  # Content Type
    0x08: _STRING,  # Response Topic
    0x09: _BINARY,  # Correlation Data
    0x0B: _VARINT,  # Subscription Identifier
    0x11: _FOUR,  # Session Expiry Interval
    0x12: _STRING,  # Assigned Client Identifier
    0x13: _TWO,  # Server Keep Alive
    0x15: _STRING,  # Authentication Method
    0x16: _BINARY,  # Authentication Data
    0x17: _BYTE,  # Request Problem Information
    0x18: _FOUR,  # Will Delay Interval
    0x19: _BYTE,  # Request Response Information
    0x1A: _STRING,  # Response Information
    0x1C: _STRING,  # Server Reference
    0x1F: _STRING,  # Reason String
    0x21: _TWO,  # Receive Maximum
    0x22: _TWO,  # Topic Alias Maximum
    0x23: _TWO,  # Topic Alias
    0x24: _BYTE,  # Maximum QoS
    0x25: _BYTE,  # Retain Available
    0x26: _PAIR,  # User Property
    0x27: _FOUR,  # Maximum Packet Size
    0x28: _BYTE,  # Wildcard Subscription Available
    0x29: _BYTE,  # Subscription Identifier Available
    0x2A: _BYTE,  # Shared Subscription Available
}
MESSAGE_EXPIRY, RESPONSE_TOPIC, CORRELATION_DATA, TOPIC_ALIAS = 0x02, 0x08, 0x09, 0x23
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE, REASON_STRING = 0x11, 0x12, 0x13, 0x1F
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, MAXIMUM_QOS, MAXIMUM_PACKET_SIZE = 0x21, 0x22, 0x24, 0x27

# v5 reason codes >= 0x80 mean the same in CONNACK, PUBACK, SUBACK and DISCONNECT (section 2.4).
REASONS: Final = {
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}
# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3), named as paho names them.
CONNACK_V311: Final = {
    0: "Connection Accepted",
    1: "Unacceptable protocol version",
    2: "Identifier rejected",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}
_LOW: Final = {
    CONNACK: {0x00: "Success"},
    PUBACK: {0x00: "Success", 0x10: "No matching subscribers"},
    SUBACK: {0x00: "Granted QoS 0", 0x01: "Granted QoS 1", 0x02: "Granted QoS 2"},
    DISCONNECT: {0x00: "Normal disconnection", 0x04: "Disconnect with Will Message"},
}


def reason_name(code: int, packet: int = CONNACK, *, v5: bool = True) -> str:
    """A reason code (v5) or CONNACK return code (3.1.1) as the specification names it."""
    if not v5 and packet == CONNACK:
        return CONNACK_V311.get(code, f"Unknown return code {code}")
    return _LOW.get(packet, {}).get(code) or REASONS.get(code) or f"Unknown reason 0x{code:02X}"


class ProtocolError(ValueError):
    """The peer sent something the specification does not allow: close the connection."""


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (section 4.7): `+` is one level, `#` the rest (or none).

    A filter that starts with a wildcard does not match `$` topics (section 4.7.2).
    """
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    levels = topic.split("/")
    for index, part in enumerate(topic_filter.split("/")):
        if part == "#":
            return True
        if index >= len(levels) or (part not in {"+", levels[index]}):
            return False
    return index + 1 == len(levels)


# -- encoders ----------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """A Variable Byte Integer (section 1.5.5)."""
    if value < 0x80:
        return bytes((value,))
    if value > _VARINT_MAX:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 0x80)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("strings and binary data are limited to 65535 bytes")
    return _u16(len(data)) + data


def _string(text: str) -> bytes:
    return _binary(text.encode())


def _packet(first: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return bytes((first,)) + varint(len(body)) + body


def _property_block(props: bytes) -> bytes:
    return varint(len(props)) + props


class Will:
    """The last will: published by the server if the connection ends without DISCONNECT."""

    __slots__ = ("payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


def connect(
    client_id: str,
    *,
    v5: bool = True,
    clean_start: bool = False,
    keepalive: int = 60,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
    session_expiry: int | None = None,
    receive_maximum: int | None = None,
    maximum_packet_size: int | None = MAX_PACKET,
) -> bytes:
    """CONNECT (section 3.1). The v5-only arguments are ignored for 3.1.1."""
    if not v5 and password is not None and username is None:
        raise ValueError("MQTT 3.1.1 does not allow a password without a user name")
    flags = (
        (0x80 if username is not None else 0)
        | (0x40 if password is not None else 0)
        | (0x02 if clean_start else 0)
    )
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    parts = [_string("MQTT"), bytes((5 if v5 else 4, flags)), _u16(keepalive)]
    if v5:
        parts.append(_connect_properties(session_expiry, receive_maximum, maximum_packet_size))
    parts.append(_string(client_id))
    if will is not None:
        if v5:
            parts.append(b"\x00")  # no will properties
        parts += [_string(will.topic), _binary(will.payload)]
    if username is not None:
        parts.append(_string(username))
    if password is not None:
        parts.append(_binary(password.encode()))
    return _packet(CONNECT << 4, *parts)


def _connect_properties(
    session_expiry: int | None, receive_maximum: int | None, maximum_packet_size: int | None
) -> bytes:
    props = b""
    if session_expiry:
        props += bytes((SESSION_EXPIRY,)) + session_expiry.to_bytes(4, "big")
    if receive_maximum is not None and receive_maximum != 0xFFFF:
        props += bytes((RECEIVE_MAXIMUM,)) + _u16(receive_maximum)
    if maximum_packet_size is not None:
        props += bytes((MAXIMUM_PACKET_SIZE,)) + maximum_packet_size.to_bytes(4, "big")
    return _property_block(props)


def subscribe(packet_id: int, filters: Sequence[tuple[str, int]], *, v5: bool = True) -> bytes:
    """SUBSCRIBE (section 3.8): (filter, maximum QoS) pairs; v5 options otherwise all off."""
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    parts = [_u16(packet_id)]
    if v5:
        parts.append(b"\x00")
    for topic_filter, qos in filters:
        parts += [_string(topic_filter), bytes((qos,))]
    return _packet(SUBSCRIBE << 4 | 0x02, *parts)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    v5: bool = True,
    correlation: bytes | None = None,
    response_topic: str | None = None,
    expiry: int | None = None,
) -> bytes:
    """PUBLISH (section 3.3). Properties only for v5, and only those given."""
    name = topic.encode()
    head = _u16(len(name)) + name
    if qos:
        head += _u16(packet_id)
    if v5:
        if correlation is None and response_topic is None and expiry is None:
            head += b"\x00"
        else:
            props = b""
            if expiry is not None:
                props += bytes((MESSAGE_EXPIRY,)) + expiry.to_bytes(4, "big")
            if response_topic is not None:
                props += bytes((RESPONSE_TOPIC,)) + _string(response_topic)
            if correlation is not None:
                props += bytes((CORRELATION_DATA,)) + _binary(correlation)
            head += _property_block(props)
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    size = len(head) + len(payload)
    if size < 0x80:
        return bytes((first, size)) + head + payload
    return bytes((first,)) + varint(size) + head + payload


def puback(packet_id: int, reason: int = 0, *, v5: bool = True) -> bytes:
    """PUBACK (section 3.4); success takes the short form, which 3.1.1 has only."""
    if reason == 0 or not v5:
        return bytes((PUBACK << 4, 2)) + _u16(packet_id)
    return bytes((PUBACK << 4, 3)) + _u16(packet_id) + bytes((reason,))


PINGREQ: Final = bytes((PINGREQ_TYPE << 4, 0))


def disconnect(reason: int = 0, *, v5: bool = True) -> bytes:
    """DISCONNECT (section 3.14); a v5 reason other than 0 (e.g. 0x04: send the will) is sent."""
    if reason == 0 or not v5:
        return bytes((DISCONNECT << 4, 0))
    return bytes((DISCONNECT << 4, 1, reason))


# -- decoded packets ---------------------------------------------------------------------------


class Properties:
    """The v5 properties the bridge reads; every other one is checked and skipped."""

    __slots__ = (
        "assigned_client_id",
        "correlation",
        "expiry",
        "maximum_packet_size",
        "maximum_qos",
        "reason_string",
        "receive_maximum",
        "response_topic",
        "server_keep_alive",
        "topic_alias",
        "topic_alias_maximum",
    )

    def __init__(self) -> None:
        self.expiry: int | None = None
        self.response_topic: str | None = None
        self.correlation: bytes | None = None
        self.topic_alias: int | None = None
        self.assigned_client_id: str | None = None
        self.reason_string: str | None = None
        self.server_keep_alive: int | None = None
        self.receive_maximum = 0xFFFF  # absent means 65535 (section 3.2.2.3.3)
        self.maximum_qos = 2
        self.topic_alias_maximum = 0
        self.maximum_packet_size: int | None = None


class Connack(Properties):
    """CONNACK; with MQTT 5 it carries the server's limits (the properties above)."""

    __slots__ = ("reason", "session_present")

    def __init__(self, session_present: bool, reason: int) -> None:
        super().__init__()
        self.session_present = session_present
        self.reason = reason  # v5 reason code, or the 3.1.1 return code


class Suback:
    __slots__ = ("codes", "packet_id", "reason_string")

    def __init__(self, packet_id: int, codes: list[int], reason_string: str | None) -> None:
        self.packet_id, self.codes, self.reason_string = packet_id, codes, reason_string


class Publish:
    __slots__ = (
        "correlation",
        "dup",
        "expiry",
        "packet_id",
        "payload",
        "qos",
        "response_topic",
        "retain",
        "topic",
    )

    def __init__(
        self, topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int
    ) -> None:
        self.topic, self.payload, self.qos = topic, payload, qos
        self.retain, self.dup, self.packet_id = retain, dup, packet_id
        self.response_topic: str | None = None
        self.correlation: bytes | None = None
        self.expiry: int | None = None


class Puback:
    __slots__ = ("packet_id", "reason")

    def __init__(self, packet_id: int, reason: int) -> None:
        self.packet_id, self.reason = packet_id, reason


class Pingresp:
    __slots__ = ()


class Disconnect:
    __slots__ = ("reason", "reason_string")

    def __init__(self, reason: int, reason_string: str | None) -> None:
        self.reason, self.reason_string = reason, reason_string


Packet = Connack | Suback | Publish | Puback | Pingresp | Disconnect
_PINGRESP: Final = Pingresp()


# -- decoder -----------------------------------------------------------------------------------


class Decoder:
    """Feed bytes as they arrive; get back every packet they complete, in order.

    The remainder of an incomplete packet is kept (copied once, and re-read only when enough
    has arrived to complete it). A packet larger than `max_packet` is a ProtocolError.
    """

    __slots__ = ("_buf", "_max", "_need", "v5")

    def __init__(self, *, v5: bool = True, max_packet: int = MAX_PACKET) -> None:
        self.v5 = v5
        self._max = max(max_packet, 128)
        self._buf = bytearray()
        self._need = 0

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        self._need = 0
        packets: list[Packet] = []
        pos, size = 0, len(data)
        while size - pos >= 2:
            first, length, start = data[pos], data[pos + 1], pos + 2
            if length > 0x7F:
                length, start = self._length(data, pos + 1, size)
                if start < 0:
                    break
            end = start + length
            if end > size:
                self._need = end - pos
                break
            packets.append(self._packet(first, data, start, end))
            pos = end
        if pos < size:
            buf += memoryview(data)[pos:]
        return packets

    def _length(self, data: bytes, i: int, size: int) -> tuple[int, int]:
        """Remaining Length at `i`: (length, index after it), or (-1, -1) if incomplete."""
        value, shift = 0, 0
        for index in range(i, min(i + 4, size)):
            digit = data[index]
            value |= (digit & 0x7F) << shift
            if not digit & 0x80:
                if index + 1 + value - (i - 1) > self._max:
                    raise ProtocolError(f"packet of {value} bytes, more than {self._max}")
                return value, index + 1
            shift += 7
        if size - i >= 4:
            raise ProtocolError("Remaining Length longer than four bytes")
        return -1, -1

    def _packet(self, first: int, data: bytes, start: int, end: int) -> Packet:
        kind = first >> 4
        try:
            if kind == PUBLISH:
                return self._publish(first, data, start, end)
            if first & 0x0F:
                raise ProtocolError(f"reserved flags 0x{first & 0x0F:X} on packet type {kind}")
            if kind == PUBACK:
                return self._puback(data, start, end)
            if kind == PINGRESP:
                if end != start:
                    raise ProtocolError("PINGRESP with a body")
                return _PINGRESP
            if kind == SUBACK:
                return self._suback(data, start, end)
            if kind == CONNACK:
                return self._connack(data, start, end)
            if kind == DISCONNECT and self.v5:
                return self._disconnect(data, start, end)
        except (IndexError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"malformed packet of type {kind}: {exc}") from exc
        raise ProtocolError(f"unexpected packet type {kind} from the server")

    def _publish(self, first: int, data: bytes, i: int, end: int) -> Publish:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        topic, i = _string_at(data, i, end)
        packet_id = 0
        if qos:
            _check(i, 2, end)
            packet_id = data[i] << 8 | data[i + 1]
            i += 2
            if not packet_id:
                raise ProtocolError("PUBLISH with packet identifier 0")
        message = Publish(topic, b"", qos, bool(first & 0x01), bool(first & 0x08), packet_id)
        if self.v5:
            if i < end and data[i] == 0:
                i += 1
            else:
                props, i = _properties(data, i, end)
                if props.topic_alias is not None:
                    # We advertise no Topic Alias Maximum (0), so the server may not use one.
                    raise ProtocolError("PUBLISH with a Topic Alias we did not allow")
                message.response_topic = props.response_topic
                message.correlation = props.correlation
                message.expiry = props.expiry
        message.payload = data[i:end]
        return message

    def _puback(self, data: bytes, i: int, end: int) -> Puback:
        size = end - i
        if size < 2 or (size > 2 and not self.v5):
            raise ProtocolError(f"PUBACK of {size} bytes")
        reason = data[i + 2] if size > 2 else 0
        if size > 3:
            _properties(data, i + 3, end)
        return Puback(data[i] << 8 | data[i + 1], reason)

    def _suback(self, data: bytes, i: int, end: int) -> Suback:
        _check(i, 2, end)
        packet_id = data[i] << 8 | data[i + 1]
        i += 2
        reason_string = None
        if self.v5:
            props, i = _properties(data, i, end)
            reason_string = props.reason_string
        if i >= end:
            raise ProtocolError("SUBACK without return codes")
        return Suback(packet_id, list(data[i:end]), reason_string)

    def _connack(self, data: bytes, i: int, end: int) -> Connack:
        _check(i, 2, end)
        if data[i] & 0xFE:
            raise ProtocolError("CONNACK with reserved flags set")
        connack = Connack(bool(data[i] & 0x01), data[i + 1])
        if not self.v5:
            if end - i != 2:
                raise ProtocolError("CONNACK of the wrong length")
            return connack
        _properties(data, i + 2, end, connack)
        if connack.receive_maximum == 0:
            raise ProtocolError("CONNACK with Receive Maximum 0")
        return connack

    def _disconnect(self, data: bytes, i: int, end: int) -> Disconnect:
        reason = data[i] if end > i else 0
        reason_string = None
        if end - i > 1:
            reason_string = _properties(data, i + 1, end)[0].reason_string
        return Disconnect(reason, reason_string)


def _check(i: int, n: int, end: int) -> None:
    if i + n > end:
        raise ProtocolError("field runs past the end of its packet")


def _string_at(data: bytes, i: int, end: int) -> tuple[str, int]:
    _check(i, 2, end)
    stop = i + 2 + (data[i] << 8 | data[i + 1])
    _check(stop, 0, end)
    return data[i + 2 : stop].decode(), stop


def _varint_at(data: bytes, i: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    for index in range(i, min(i + 4, end)):
        digit = data[index]
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, index + 1
        shift += 7
    raise ProtocolError("Variable Byte Integer truncated or longer than four bytes")


_NAMES: Final = {
    MESSAGE_EXPIRY: "expiry",
    RESPONSE_TOPIC: "response_topic",
    CORRELATION_DATA: "correlation",
    TOPIC_ALIAS: "topic_alias",
    ASSIGNED_CLIENT_ID: "assigned_client_id",
    REASON_STRING: "reason_string",
    SERVER_KEEP_ALIVE: "server_keep_alive",
    RECEIVE_MAXIMUM: "receive_maximum",
    MAXIMUM_QOS: "maximum_qos",
    TOPIC_ALIAS_MAXIMUM: "topic_alias_maximum",
    MAXIMUM_PACKET_SIZE: "maximum_packet_size",
}


def _properties(
    data: bytes, i: int, end: int, found: Properties | None = None
) -> tuple[Properties, int]:
    """The v5 properties at `i` (into `found`, or a new Properties) and the index after them.
    Those the bridge does not read (User Properties and Subscription Identifiers among them,
    which may repeat) are checked and skipped."""
    length, i = _varint_at(data, i, end)
    stop = i + length
    _check(stop, 0, end)
    if found is None:
        found = Properties()
    while i < stop:
        ident = data[i]
        value, i = _property_value(ident, data, i + 1, stop)
        name = _NAMES.get(ident)
        if name is not None:
            setattr(found, name, value)
    return found, stop


def _property_value(ident: int, data: bytes, i: int, stop: int) -> tuple[int | str | bytes, int]:
    kind = _KINDS.get(ident)
    if kind == _BYTE:
        _check(i, 1, stop)
        return data[i], i + 1
    if kind == _TWO:
        _check(i, 2, stop)
        return data[i] << 8 | data[i + 1], i + 2
    if kind == _FOUR:
        _check(i, 4, stop)
        return int.from_bytes(data[i : i + 4], "big"), i + 4
    if kind == _VARINT:
        return _varint_at(data, i, stop)
    if kind == _STRING:
        return _string_at(data, i, stop)
    if kind == _BINARY:
        _check(i, 2, stop)
        n = data[i] << 8 | data[i + 1]
        _check(i + 2, n, stop)
        return data[i + 2 : i + 2 + n], i + 2 + n
    if kind == _PAIR:
        _, i = _string_at(data, i, stop)
        return _string_at(data, i, stop)
    raise ProtocolError(f"unknown property 0x{ident:02X}")
