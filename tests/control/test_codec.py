"""The hardened decoder and the encoder, without sockets."""

from __future__ import annotations

import math
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage as PyOscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.control.codec import (
    IMPULSE,
    MAX_ARGS,
    MAX_BUNDLE_DEPTH,
    MAX_ELEMENTS,
    MAX_PACKET_BYTES,
    DecodeError,
    OscBundle,
    OscMessage,
    decode_packet,
    encode_bundle,
    encode_message,
    iter_messages,
)


def pad(raw: bytes) -> bytes:
    return raw + b"\x00" * (4 - len(raw) % 4)


def py_message(address: str, *typed: tuple[str, object]) -> bytes:
    b = OscMessageBuilder(address)
    for tag, value in typed:
        b.add_arg(value, tag)
    return b.build().dgram


def reason(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_packet(data)
    return info.value.reason


# -- every type tag ------------------------------------------------------------------------------


def test_decodes_every_supported_type_from_python_osc() -> None:
    data = py_message(
        "/t",
        ("i", -7),
        ("f", 0.25),
        ("s", "héllo"),
        ("b", b"\x01\x02\x03"),
        ("T", True),
        ("F", False),
        ("N", None),
        ("h", 2**40),
        ("d", 0.1),
    )
    msg = decode_packet(data)
    assert msg == OscMessage(
        "/t", "ifsbTFNhd", (-7, 0.25, "héllo", b"\x01\x02\x03", True, False, None, 2**40, 0.1)
    )


def test_impulse_and_empty_message() -> None:
    assert decode_packet(encode_message("/sd/state", IMPULSE)).args == (IMPULSE,)
    assert decode_packet(encode_message("/sd/state")) == OscMessage("/sd/state", "", ())
    assert decode_packet(py_message("/sd/state")) == OscMessage("/sd/state", "", ())


def test_float32_reads_as_its_shortest_decimal() -> None:
    assert decode_packet(py_message("/x", ("f", 0.3))).args == (0.3,)
    nan, inf = decode_packet(encode_message("/x", math.nan, -math.inf)).args
    assert math.isnan(nan) and inf == -math.inf


# -- framing and alignment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty packet"),
        (b"/sd/seed\x00\x00\x00\x00,i\x00\x00\x00\x00\x00", "not a multiple of 4"),
        (b"/sd/seed\x00\x00\x00\x00", "no type tag string"),
        (b"/sd/seed\x00\x00\x00\x00i\x00\x00\x00\x00\x00\x00\x01", "no type tag string"),
        (b"sd/seed\x00,i\x00\x00\x00\x00\x00\x01", "must start with '/'"),
        (b"/sd/seedxxxx", "not NUL-terminated"),
        (b"/sd/seed\x00x\x00\x00,i\x00\x00\x00\x00\x00\x01", "padding is not all NUL"),
        (b"/sd/seed\x00\x00\x00\x00,i\x00\x00", "truncated int32"),
        (b"/sd/seed\x00\x00\x00\x00,h\x00\x00\x00\x00\x00\x01", "truncated int64"),
        (b"/sd/seed\x00\x00\x00\x00,d\x00\x00\x00\x00\x00\x01", "truncated float64"),
        (b"/x\x00\x00,f\x00\x00", "truncated float32"),
        (b"/x\x00\x00,s\x00\x00abcd", "not NUL-terminated"),
        (b"/x\x00\x00,i\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00", "trailing bytes"),
        (b"/x\x00\x00,b\x00\x00\xff\xff\xff\xff", "negative blob size"),
        (b"/x\x00\x00,b\x00\x00\x00\x00\x00\x08abcd", "truncated blob"),
        (b"/x\x00\x00,b\x00\x00\x00\x00\x00\x02ab\x01\x00", "blob padding"),
        (b"/x\x00\x00,c\x00\x00\x00\x00\x00A", "unsupported type tag 'c'"),
        (b"/x\x00\x00,[i]\x00\x00\x00\x00\x00\x00\x00\x01", "unsupported type tag '['"),
        (b"/x\x00\x00,r\x00\x00\x00\x00\x00\x00", "unsupported type tag 'r'"),
        (b"xyz\x00", "nor a bundle"),
        (b"#bundle\x00", "truncated bundle header"),
        (b"#bundlX\x00" + bytes(8), "nor a bundle"),
    ],
)
def test_malformed_packets_are_rejected_with_a_reason(data: bytes, expected: str) -> None:
    assert expected in reason(data)


def test_non_utf8_address_and_string_are_rejected() -> None:
    assert "not valid UTF-8" in reason(pad(b"/sd/\xffprompt") + pad(b",s") + pad(b"ok"))
    assert "not valid UTF-8" in reason(pad(b"/sd/prompt") + pad(b",s") + pad(b"\xc3\x28"))
    # a UTF-16 surrogate smuggled in as (invalid) UTF-8 is refused too
    assert "not valid UTF-8" in reason(pad(b"/sd/prompt") + pad(b",s") + pad(b"\xed\xa0\x80"))


def test_decode_error_carries_the_address_once_known() -> None:
    with pytest.raises(DecodeError) as info:
        decode_packet(pad(b"/sd/prompt") + pad(b",s") + pad(b"\xff"))
    assert info.value.address == "/sd/prompt"


# -- caps ---------------------------------------------------------------------------------------


def test_packet_size_cap() -> None:
    big = encode_message("/sd/prompt", "x" * MAX_PACKET_BYTES)
    assert len(big) > MAX_PACKET_BYTES
    assert "larger than" in reason(big)


def test_address_length_cap() -> None:
    assert "longer than" in reason(encode_message("/" + "a" * 2000))


def nest(inner: bytes, depth: int, timetag: int = 1) -> bytes:
    for _ in range(depth):
        inner = encode_bundle([inner], timetag)
    return inner


def test_bundle_depth_cap() -> None:
    ok = decode_packet(nest(encode_message("/sd/seed", 1), MAX_BUNDLE_DEPTH))
    assert iter_messages(ok) == [OscMessage("/sd/seed", "i", (1,))]
    assert "nested deeper" in reason(nest(encode_message("/sd/seed", 1), MAX_BUNDLE_DEPTH + 1))
    # 400 deep is what made python-osc raise RecursionError: here a plain DecodeError
    assert "nested deeper" in reason(nest(encode_message("/sd/seed", 1), 400))


def test_element_and_argument_caps() -> None:
    many = encode_bundle([encode_message("/a")] * MAX_ELEMENTS)
    assert "more than" in reason(many)
    assert "more than" in reason(encode_message("/a", *([1] * (MAX_ARGS + 1))))
    assert len(decode_packet(encode_message("/a", *([1] * MAX_ARGS))).args) == MAX_ARGS


@pytest.mark.parametrize(
    ("element_size", "expected"),
    [(0, "bad bundle element size 0"), (6, "bad bundle element size 6"), (64, "runs past")],
)
def test_bad_bundle_element_sizes(element_size: int, expected: str) -> None:
    msg = encode_message("/sd/seed", 1)
    data = b"#bundle\x00" + bytes(8) + struct.pack(">i", element_size) + msg
    assert expected in reason(data)


def test_bundle_timetag_is_kept_but_never_waited_on() -> None:
    far = OscBundleBuilder(time.time() + 365 * 24 * 3600)  # a year ahead
    b = OscMessageBuilder("/sd/seed")
    b.add_arg(3)
    far.add_content(b.build())
    bundle = decode_packet(far.build().dgram)
    assert isinstance(bundle, OscBundle) and bundle.timetag > 1
    assert decode_packet(encode_bundle([], 2**64 - 1)) == OscBundle(2**64 - 1, ())
    assert decode_packet(encode_bundle([])) == OscBundle(1, ())


def test_iter_messages_keeps_order_through_nesting() -> None:
    inner = encode_bundle([encode_message("/b"), encode_message("/c")])
    packet = decode_packet(encode_bundle([encode_message("/a"), inner, encode_message("/d")]))
    assert [m.address for m in iter_messages(packet)] == ["/a", "/b", "/c", "/d"]


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    data = encode_message("/sd/seed", 5)
    assert decode_packet(bytearray(data)) == decode_packet(memoryview(data)) == decode_packet(data)


# -- encoder ------------------------------------------------------------------------------------


def test_encoder_types_match_python_osc_parser() -> None:
    data = encode_message("/sd/x", True, False, 3, 2**40, 0.5, "ünï", b"ab", None)
    parsed = PyOscMessage(data)
    assert parsed.address == "/sd/x"
    assert parsed.params == [True, False, 3, 2**40, 0.5, "ünï", b"ab", None]
    assert decode_packet(data).typetags == "TFihfsbN"


def test_encoder_falls_back_to_double_beyond_float32() -> None:
    assert decode_packet(encode_message("/x", 1e300)).args == (1e300,)


def test_encoder_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_message("no-slash")
    with pytest.raises(ValueError):
        encode_message("/x", "nul\x00inside")
    with pytest.raises(ValueError):
        encode_message("/x", 2**70)
    with pytest.raises(TypeError):
        encode_message("/x", object())  # type: ignore[arg-type]


osc_values = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(width=32, allow_nan=False),
    st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        max_size=40,
    ),
    st.binary(max_size=40),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s),
    st.lists(osc_values, max_size=6),
)
def test_encode_decode_round_trip(tail: str, args: list) -> None:
    address = "/" + tail.replace("\ud800", "")
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return
    msg = decode_packet(encode_message(address, *args))
    assert isinstance(msg, OscMessage) and msg.address == address
    assert len(msg.args) == len(args)
    for got, sent in zip(msg.args, args, strict=True):
        assert type(got) is type(sent)
        if isinstance(sent, float):  # float32 on the wire: the same 4 bytes come back
            assert struct.pack(">f", got) == struct.pack(">f", sent)
        else:
            assert got == sent
