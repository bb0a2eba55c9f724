"""bridge.mqttwire: every packet the bridge sends or reads, as bytes, for MQTT 5 and 3.1.1.

What a server would send (CONNACK, SUBACK, ...) is built here by hand from the specification's
layout, and what the bridge sends (CONNECT, SUBSCRIBE) is read back by a small parser of its own,
so the codec is never checked only against itself.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import mqttwire as w
from bridge.mqttwire import Decoder, ProtocolError


def frame(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes((kind << 4 | flags,)) + w.varint(len(body)) + body


def utf8(text: str) -> bytes:
    return struct.pack("!H", len(text.encode())) + text.encode()


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return w.varint(len(body)) + body


def one(data: bytes, *, v5: bool = True) -> w.Packet:
    packets = Decoder(v5=v5).feed(data)
    assert len(packets) == 1
    return packets[0]


class Reader:
    """Reads fields in order from a client packet's body: the test's own view of the layout."""

    def __init__(self, data: bytes) -> None:
        self.first = data[0]
        length, shift, i = 0, 0, 1
        while True:
            digit = data[i]
            length |= (digit & 0x7F) << shift
            i += 1
            if not digit & 0x80:
                break
            shift += 7
        assert len(data) == i + length, "Remaining Length must cover exactly the rest"
        self.data, self.i = data, i

    def take(self, n: int) -> bytes:
        chunk = self.data[self.i : self.i + n]
        self.i += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        return self.binary().decode()

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            digit = self.u8()
            value |= (digit & 0x7F) << shift
            if not digit & 0x80:
                return value
            shift += 7

    def properties(self) -> bytes:
        return self.take(self.varint())

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.i)


# -- CONNECT and SUBSCRIBE ----------------------------------------------------------------------


def test_connect_v5_with_everything() -> None:
    will = w.Will("bridge/state", b'{"state":"offline"}', qos=1, retain=True)
    packet = w.connect(
        "iotbridge-a",
        v5=True,
        keepalive=30,
        will=will,
        username="bridge",
        password="s3cret",
        session_expiry=86400,
        receive_maximum=100,
    )
    r = Reader(packet)
    assert r.first == 0x10
    assert (r.string(), r.u8()) == ("MQTT", 5)
    # user name, password, will retain, will QoS 1, will flag; clean start off
    assert r.u8() == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert r.u16() == 30
    assert r.properties() == (
        b"\x11" + (86400).to_bytes(4, "big") + b"\x21\x00\x64" + b"\x27" + b"\x01\x00\x00\x00"
    )
    assert r.string() == "iotbridge-a"
    assert r.properties() == b""  # will properties
    assert (r.string(), r.binary()) == ("bridge/state", b'{"state":"offline"}')
    assert (r.string(), r.binary()) == ("bridge", b"s3cret")
    assert r.rest() == b""


def test_connect_v311_clean_session_off_no_will() -> None:
    r = Reader(w.connect("c", v5=False, keepalive=60, username="u"))
    assert (r.string(), r.u8(), r.u8(), r.u16()) == ("MQTT", 4, 0x80, 60)
    assert (r.string(), r.string(), r.rest()) == ("c", "u", b"")


def test_connect_clean_start_and_no_optional_properties() -> None:
    r = Reader(w.connect("c", clean_start=True, maximum_packet_size=None))
    assert (r.string(), r.u8(), r.u8(), r.u16(), r.properties()) == ("MQTT", 5, 0x02, 60, b"")


def test_connect_v311_refuses_a_password_without_user() -> None:
    with pytest.raises(ValueError, match="password"):
        w.connect("c", v5=False, password="p")


@pytest.mark.parametrize("v5", [True, False])
def test_subscribe(v5: bool) -> None:
    r = Reader(w.subscribe(7, [("pager/+/action", 1), ("$SYS/x", 0)], v5=v5))
    assert r.first == 0x82  # SUBSCRIBE carries the reserved flags 0010
    assert r.u16() == 7
    if v5:
        assert r.properties() == b""
    assert [(r.string(), r.u8()), (r.string(), r.u8())] == [("pager/+/action", 1), ("$SYS/x", 0)]
    assert r.rest() == b""


def test_small_fixed_packets() -> None:
    assert w.PINGREQ == b"\xc0\x00"
    assert w.disconnect() == b"\xe0\x00"
    assert w.disconnect(0x04) == b"\xe0\x01\x04"
    assert w.disconnect(0x04, v5=False) == b"\xe0\x00"
    assert w.puback(0x1234) == b"\x40\x02\x12\x34"
    assert w.puback(0x1234, 0x87) == b"\x40\x03\x12\x34\x87"
    assert w.puback(0x1234, 0x87, v5=False) == b"\x40\x02\x12\x34"


# -- what a server sends ------------------------------------------------------------------------


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize(
    ("qos", "retain", "dup", "packet_id"), [(0, False, False, 0), (1, True, True, 65535)]
)
def test_publish_round_trip(v5: bool, qos: int, retain: bool, dup: bool, packet_id: int) -> None:
    data = w.publish(
        "pager/66/action", b"{}", qos=qos, retain=retain, dup=dup, packet_id=packet_id, v5=v5
    )
    message = one(data, v5=v5)
    assert isinstance(message, w.Publish)
    assert (message.topic, message.payload, message.qos) == ("pager/66/action", b"{}", qos)
    assert (message.retain, message.dup, message.packet_id) == (retain, dup, packet_id)
    assert (message.response_topic, message.correlation, message.expiry) == (None, None, None)


def test_publish_v5_properties_round_trip() -> None:
    data = w.publish(
        "t", b"p", qos=1, packet_id=1, correlation=b"\x00c", response_topic="reply/1", expiry=60
    )
    message = one(data)
    assert isinstance(message, w.Publish)
    assert (message.response_topic, message.correlation, message.expiry) == (
        "reply/1",
        b"\x00c",
        60,
    )


def test_publish_v311_drops_v5_properties() -> None:
    data = w.publish("t", b"p", qos=1, packet_id=1, correlation=b"c", v5=False)
    assert data == b"\x32\x06\x00\x01t\x00\x01p"


def test_publish_skips_properties_it_does_not_read() -> None:
    body = (
        utf8("a/b")
        + b"\x00\x05"
        + props(
            b"\x26" + utf8("k") + utf8("v"),  # User Property
            b"\x0b" + w.varint(268_435_455),  # Subscription Identifier, four bytes
            b"\x26" + utf8("k") + utf8("v2"),  # User Properties may repeat
            b"\x0b\x01",  # and so may Subscription Identifiers
            b"\x01\x01",  # Payload Format Indicator
            b"\x03" + utf8("application/json"),  # Content Type
            b"\x08" + utf8("re/ply"),  # Response Topic
        )
    )
    message = one(frame(w.PUBLISH, body + b"payload", flags=0x02))
    assert isinstance(message, w.Publish)
    assert (message.topic, message.packet_id, message.payload) == ("a/b", 5, b"payload")
    assert message.response_topic == "re/ply"


def test_puback_forms() -> None:
    assert isinstance(p := one(b"\x40\x02\x00\x09"), w.Puback)
    assert (p.packet_id, p.reason) == (9, 0)
    assert isinstance(p := one(b"\x40\x03\x00\x09\x10"), w.Puback)
    assert (p.packet_id, p.reason) == (9, 0x10)
    with_reason_string = frame(w.PUBACK, b"\x00\x09\x87" + props(b"\x1f" + utf8("no")))
    assert isinstance(p := one(with_reason_string), w.Puback)
    assert (p.packet_id, p.reason) == (9, 0x87)
    assert isinstance(p := one(b"\x40\x02\x00\x09", v5=False), w.Puback)
    assert p.packet_id == 9


def test_connack_v5_properties() -> None:
    body = b"\x01\x00" + props(
        b"\x21\x00\x14",  # Receive Maximum 20
        b"\x24\x01",  # Maximum QoS 1
        b"\x12" + utf8("auto-1"),  # Assigned Client Identifier
        b"\x1f" + utf8("welcome"),  # Reason String
        b"\x13\x00\x0a",  # Server Keep Alive
        b"\x22\x00\x05",  # Topic Alias Maximum
        b"\x27\x00\x01\x00\x00",  # Maximum Packet Size
        b"\x25\x01\x28\x01\x29\x00\x2a\x01",  # availability flags
        b"\x26" + utf8("k") + utf8("v"),
    )
    c = one(frame(w.CONNACK, body))
    assert isinstance(c, w.Connack)
    assert (c.session_present, c.reason, c.receive_maximum, c.maximum_qos) == (True, 0, 20, 1)
    assert (c.assigned_client_id, c.reason_string, c.server_keep_alive) == ("auto-1", "welcome", 10)
    assert (c.topic_alias_maximum, c.maximum_packet_size) == (5, 65536)


def test_connack_defaults_and_v311() -> None:
    c = one(b"\x20\x03\x00\x87\x00")
    assert isinstance(c, w.Connack)
    assert (c.session_present, c.reason, c.receive_maximum, c.maximum_qos) == (
        False,
        0x87,
        65535,
        2,
    )
    c = one(b"\x20\x02\x00\x05", v5=False)
    assert isinstance(c, w.Connack)
    assert c.reason == 5


@pytest.mark.parametrize("v5", [True, False])
def test_suback(v5: bool) -> None:
    body = b"\x00\x07" + (props(b"\x1f" + utf8("ok")) if v5 else b"") + b"\x01\x00\x80"
    s = one(frame(w.SUBACK, body), v5=v5)
    assert isinstance(s, w.Suback)
    assert (s.packet_id, s.codes, s.reason_string) == (7, [1, 0, 0x80], "ok" if v5 else None)


def test_pingresp_and_disconnect() -> None:
    assert isinstance(one(b"\xd0\x00"), w.Pingresp)
    d = one(frame(w.DISCONNECT, b"\x8b" + props(b"\x1f" + utf8("bye"))))
    assert isinstance(d, w.Disconnect)
    assert (d.reason, d.reason_string) == (0x8B, "bye")
    d = one(w.disconnect(0x04))
    assert isinstance(d, w.Disconnect)
    assert (d.reason, d.reason_string) == (0x04, None)
    d = one(b"\xe0\x00")
    assert isinstance(d, w.Disconnect)
    assert d.reason == 0


# -- feeding --------------------------------------------------------------------------------------


def stream() -> tuple[bytes, int]:
    packets = [
        frame(w.CONNACK, b"\x00\x00\x00"),
        frame(w.SUBACK, b"\x00\x01\x00\x01"),
        w.publish("big", b"x" * 70_000, qos=1, packet_id=3, correlation=b"c"),
        b"\x40\x02\x00\x01",
        b"\xd0\x00",
        *(w.publish(f"pager/{n}/action", b"page", qos=1, packet_id=n) for n in range(1, 50)),
        w.disconnect(0x8E),
    ]
    return b"".join(packets), len(packets)


def test_byte_by_byte_equals_one_blob() -> None:
    data, count = stream()
    decoder = Decoder()
    slow = [p for i in range(len(data)) for p in decoder.feed(data[i : i + 1])]
    fast = Decoder().feed(data)
    assert len(slow) == len(fast) == count
    assert [type(p) for p in slow] == [type(p) for p in fast]
    big = slow[2]
    assert isinstance(big, w.Publish)
    assert (len(big.payload), big.correlation) == (70_000, b"c")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000, 4096])
def test_any_chunking(size: int) -> None:
    data, count = stream()
    decoder = Decoder()
    packets = [p for i in range(0, len(data), size) for p in decoder.feed(data[i : i + size])]
    assert len(packets) == count


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_edges(length: int, encoded: bytes) -> None:
    assert w.varint(length) == encoded


@pytest.mark.parametrize("length", [127, 128, 16383, 16384, 2097151, 2097152])
def test_remaining_length_edges_decode(length: int) -> None:
    head = utf8("t")  # QoS 0, v3.1.1: topic then payload, nothing else
    data = frame(w.PUBLISH, head + b"p" * (length - len(head)))
    assert len(data) == 1 + len(w.varint(length)) + length
    decoder = Decoder(v5=False)
    assert decoder.feed(data[:-1]) == []
    (message,) = decoder.feed(data[-1:])
    assert isinstance(message, w.Publish)
    assert len(message.payload) == length - 3


def test_varint_too_big_to_encode() -> None:
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        w.varint(268_435_456)


# -- malformed ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x30\xff\xff\xff\xff\x01", id="remaining-length-of-5-bytes"),
        pytest.param(b"\x30\x05\x00\x09abc", id="topic-longer-than-packet"),
        pytest.param(b"\x32\x04\x00\x01t\x00", id="packet-id-truncated"),
        pytest.param(b"\x32\x05\x00\x01t\x00\x00", id="packet-id-zero"),
        pytest.param(b"\x36\x04\x00\x01t\x00", id="qos-3"),
        pytest.param(b"\x30\x04\x00\x01t\x05", id="properties-past-the-end"),
        pytest.param(b"\x30\x05\x00\x01t\x01\x07", id="unknown-property"),
        pytest.param(b"\x30\x07\x00\x01t\x03\x23\x00\x01", id="topic-alias"),
        pytest.param(b"\x30\x05\x00\x02\xff\xfe\x00", id="topic-not-utf8"),
        pytest.param(b"\x30\x08\x00\x01t\x05\x0b\xff\xff\xff\xff", id="property-varint-too-long"),
        pytest.param(b"\x00\x00", id="packet-type-0"),
        pytest.param(b"\x50\x02\x00\x01", id="pubrec"),
        pytest.param(b"\xf0\x00", id="auth"),
        pytest.param(b"\x10\x00", id="connect-from-server"),
        pytest.param(b"\x41\x02\x00\x01", id="puback-reserved-flags"),
        pytest.param(b"\x40\x01\x00", id="puback-short"),
        pytest.param(b"\xd0\x01\x00", id="pingresp-with-body"),
        pytest.param(b"\x90\x03\x00\x01\x00", id="suback-without-codes"),
        pytest.param(b"\x20\x02\x02\x00", id="connack-reserved-flag"),
        pytest.param(b"\x20\x06\x00\x00\x03\x21\x00\x00", id="receive-maximum-0"),
    ],
)
def test_malformed_v5(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x40\x03\x00\x01\x00", id="puback-with-reason"),
        pytest.param(b"\x20\x03\x00\x00\x00", id="connack-with-properties"),
        pytest.param(b"\xe0\x00", id="disconnect-from-server"),
    ],
)
def test_malformed_v311(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder(v5=False).feed(data)


def test_incomplete_five_byte_length_fails_as_soon_as_it_is_seen() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\x30\xff\xff") == []
    with pytest.raises(ProtocolError, match="four bytes"):
        decoder.feed(b"\xff\xff")


def test_length_beyond_the_maximum() -> None:
    decoder = Decoder(max_packet=1000)
    assert decoder.feed(frame(w.PUBLISH, utf8("t") + b"x" * 990, flags=0)[:50]) == []
    with pytest.raises(ProtocolError, match="more than 1000"):
        Decoder(max_packet=1000).feed(b"\x30\xe8\x07")  # 1000 bytes of body, 1003 in all
    with pytest.raises(ProtocolError):
        Decoder().feed(b"\x30" + w.varint(w.MAX_PACKET))


# -- the rest -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "", True),
        ("a/+/c", "a//c", True),
        ("a/b", "a/c", False),
        ("a/b/c", "a/b", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/broker/x", True),
        ("homeassistant/+/iotbridge/+/config", "homeassistant/sensor/iotbridge/p1/config", True),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert w.matches(topic_filter, topic) is expected


def test_reason_names() -> None:
    assert w.reason_name(0x87) == "Not authorized"
    assert w.reason_name(0x86) == "Bad User Name or Password"
    assert w.reason_name(5, v5=False) == "Not authorized"
    assert w.reason_name(4, v5=False) == "Bad user name or password"
    assert w.reason_name(0x10, w.PUBACK) == "No matching subscribers"
    assert w.reason_name(0x8E, w.DISCONNECT) == "Session taken over"
    assert w.reason_name(0x01, w.SUBACK) == "Granted QoS 1"
    assert w.reason_name(0x7F) == "Unknown reason 0x7F"


topics = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0+#"), max_size=60)


@given(
    topic=topics,
    payload=st.binary(max_size=300),
    qos=st.integers(0, 1),
    retain=st.booleans(),
    packet_id=st.integers(1, 65535),
    v5=st.booleans(),
    correlation=st.none() | st.binary(max_size=40),
    response_topic=st.none() | topics,
    expiry=st.none() | st.integers(0, 2**32 - 1),
)
def test_publish_round_trip_property(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    packet_id: int,
    v5: bool,
    correlation: bytes | None,
    response_topic: str | None,
    expiry: int | None,
) -> None:
    data = w.publish(
        topic,
        payload,
        qos=qos,
        retain=retain,
        packet_id=packet_id,
        v5=v5,
        correlation=correlation,
        response_topic=response_topic,
        expiry=expiry,
    )
    decoder = Decoder(v5=v5)
    split = len(data) // 2
    messages = decoder.feed(data[:split]) + decoder.feed(data[split:] + data)
    assert len(messages) == 2
    for message in messages:
        assert isinstance(message, w.Publish)
        assert (message.topic, message.payload, message.qos) == (topic, payload, qos)
        assert (message.retain, message.packet_id) == (retain, packet_id if qos else 0)
        if v5:
            assert message.correlation == correlation
            assert message.response_topic == response_topic
            assert message.expiry == expiry
        else:
            assert (message.correlation, message.response_topic, message.expiry) == (None,) * 3
