"""The CoAP codec: byte-exact encodings (RFC 7252 §3), round trips, malformed input refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import coapwire
from bridge.coapwire import (
    ACK,
    BLOCK2,
    CON,
    CONTENT_FORMAT,
    ETAG,
    NON,
    OBSERVE,
    RST,
    URI_PATH,
    URI_QUERY,
    CoapFormatError,
    Message,
    block,
    decode,
    dotted,
    encode,
    parse_block,
    to_uint,
    uint,
)


def test_a_get_is_encoded_byte_for_byte() -> None:
    data = encode(CON, coapwire.GET, 0x1234, b"\xab\xcd", [(URI_PATH, b"v1"), (URI_PATH, b"x")])
    # ver 1, CON, TKL 2 | GET | MID | token | delta 11 len 2 "v1" | delta 0 len 1 "x"
    assert data == b"\x42\x01\x12\x34\xab\xcd\xb2v1\x01x"


def test_a_response_with_payload_round_trips() -> None:
    options = [(ETAG, b"\x01\x02"), (OBSERVE, uint(7)), (CONTENT_FORMAT, uint(50))]
    data = encode(ACK, coapwire.CONTENT, 65535, b"12345678", options, b'{"a":1}')
    message = decode(data)
    assert message == Message(ACK, 69, 65535, b"12345678", options, b'{"a":1}')
    assert message.option(ETAG) == b"\x01\x02"
    assert to_uint(message.option(CONTENT_FORMAT) or b"") == 50
    assert message.option(BLOCK2) is None
    assert message.encode() == data


def test_options_are_sorted_stably_by_number() -> None:
    options = [(URI_QUERY, b"b=2"), (URI_PATH, b"one"), (URI_QUERY, b"a=1"), (URI_PATH, b"two")]
    message = decode(encode(NON, coapwire.GET, 1, b"", options))
    assert message.options == [
        (URI_PATH, b"one"),
        (URI_PATH, b"two"),
        (URI_QUERY, b"b=2"),
        (URI_QUERY, b"a=1"),
    ]
    assert message.options_of(URI_PATH) == [b"one", b"two"]
    assert message.options_of(URI_QUERY) == [b"b=2", b"a=1"]


def test_the_empty_message_is_four_bytes() -> None:
    assert encode(ACK, 0, 0xBEEF, b"") == b"\x60\x00\xbe\xef"
    assert decode(b"\x70\x00\x00\x01") == Message(RST, 0, 1)


@pytest.mark.parametrize(
    ("value", "header"),
    [
        (0, b"\x00"),
        (12, b"\xc0"),
        (13, b"\xd0\x00"),
        (268, b"\xd0\xff"),
        (269, b"\xe0\x00\x00"),
        (65535, b"\xe0\xfe\xf2"),  # 65535 - 269 = 65266 = 0xfef2
    ],
)
def test_option_delta_extended_forms(value: int, header: bytes) -> None:
    data = encode(CON, coapwire.GET, 0, b"", [(value, b"")])
    assert data[4:] == header
    assert decode(data).options == [(value, b"")]


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (12, b"\x0c"),
        (13, b"\x0d\x00"),
        (268, b"\x0d\xff"),
        (269, b"\x0e\x00\x00"),
        (65804, b"\x0e\xff\xff"),
    ],
)
def test_option_length_extended_forms(length: int, header: bytes) -> None:
    value = bytes(range(256)) * (length // 256) + bytes(length % 256)
    data = encode(CON, coapwire.GET, 0, b"", [(0, value)])
    assert data[4 : 4 + len(header)] == header
    assert decode(data).options == [(0, value)]


def test_a_delta_or_length_past_the_extended_range_is_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode(CON, coapwire.GET, 0, b"", [(1, bytes(65805))])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\x40\x01\x00", "shorter"),
        (b"\x80\x01\x00\x00", "version"),
        (b"\x00\x01\x00\x00", "version"),
        (b"\x49\x01\x00\x00" + bytes(9), "token length"),
        (b"\x44\x01\x00\x00\x01\x02", "truncated token"),
        (b"\x40\x01\x00\x00\xf0", "nibble 15"),
        (b"\x40\x01\x00\x00\x0f", "nibble 15"),
        (b"\x40\x01\x00\x00\xd0", "truncated option delta"),
        (b"\x40\x01\x00\x00\xe0\x01", "truncated option delta"),
        (b"\x40\x01\x00\x00\x0d", "truncated option length"),
        (b"\x40\x01\x00\x00\x0e\x00", "truncated option length"),
        (b"\x40\x01\x00\x00\xb3ab", "truncated"),
        (b"\x40\x45\x00\x00\xff", "empty payload"),
        (b"\x41\x00\x00\x00\x01", "empty message"),
        (b"\x60\x00\x00\x00\xff\x01", "empty message"),
        (b"\x40\x01\x00\x00\xe0\xff\xff\xe0\x00\x00", "out of range"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CoapFormatError, match=reason):
        decode(data)


def test_decode_accepts_any_bytes_like() -> None:
    data = encode(CON, coapwire.PUT, 9, b"t", [(URI_PATH, b"x")], b"body")
    assert decode(bytearray(data)) == decode(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((4, 1, 0, b""), "header"),
        ((CON, 256, 0, b""), "header"),
        ((CON, 1, 65536, b""), "header"),
        ((CON, 1, 0, bytes(9)), "token"),
    ],
)
def test_encode_refuses_bad_header_fields(fields: tuple[int, int, int, bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(*fields)


@pytest.mark.parametrize(
    ("value", "data"),
    [(0, b""), (1, b"\x01"), (255, b"\xff"), (256, b"\x01\x00"), (2**32 - 1, b"\xff" * 4)],
)
def test_uint(value: int, data: bytes) -> None:
    assert uint(value) == data
    assert to_uint(data) == value


def test_uint_tolerates_leading_zeros_and_refuses_negatives() -> None:
    assert to_uint(b"\x00\x05") == 5
    with pytest.raises(ValueError, match="negative"):
        uint(-1)


@pytest.mark.parametrize(
    ("num", "more", "szx", "data"),
    [
        (0, False, 0, b""),
        (0, True, 6, b"\x0e"),
        (1, False, 6, b"\x16"),
        (15, True, 2, b"\xfa"),
        (16, False, 6, b"\x01\x06"),
        (2**20 - 1, True, 6, b"\xff\xff\xfe"),
    ],
)
def test_block_values(num: int, more: bool, szx: int, data: bytes) -> None:
    assert block(num, more, szx) == data
    assert parse_block(data) == (num, more, szx)


@pytest.mark.parametrize(("num", "szx"), [(-1, 0), (2**20, 0), (0, 7), (0, -1)])
def test_block_refuses_out_of_range_fields(num: int, szx: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        block(num, False, szx)


@pytest.mark.parametrize("data", [b"\x07", b"\x01\x02\x03\x04"])
def test_parse_block_refuses_reserved_or_long_values(data: bytes) -> None:
    with pytest.raises(CoapFormatError):
        parse_block(data)


@pytest.mark.parametrize(
    ("code", "text"), [(0, "0.00"), (1, "0.01"), (65, "2.01"), (69, "2.05"), (132, "4.04")]
)
def test_dotted(code: int, text: str) -> None:
    assert dotted(code) == text


def test_pack_options_continues_after_a_previous_option() -> None:
    assert coapwire.pack_options([(URI_PATH, b"a")], previous=OBSERVE) == b"\x51a"
    with pytest.raises(ValueError, match="out of order"):
        coapwire.pack_options([(ETAG, b"")], previous=OBSERVE)


options_lists = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 300), st.integers(0, 65535)),
        st.binary(max_size=300),
    ),
    max_size=8,
)


@given(
    mtype=st.integers(0, 3),
    code=st.integers(1, 255),
    mid=st.integers(0, 65535),
    token=st.binary(max_size=8),
    options=options_lists,
    payload=st.binary(max_size=200),
)
def test_round_trip(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: list[tuple[int, bytes]],
    payload: bytes,
) -> None:
    message = decode(encode(mtype, code, mid, token, options, payload))
    assert message.mtype == mtype
    assert message.code == code
    assert message.mid == mid
    assert message.token == token
    assert message.options == sorted(options, key=lambda option: option[0])
    assert message.payload == payload


@given(st.binary(max_size=64))
def test_decoding_arbitrary_bytes_never_fails_otherwise(data: bytes) -> None:
    try:
        message = decode(data)
    except CoapFormatError:
        return
    assert decode(message.encode()) == message
