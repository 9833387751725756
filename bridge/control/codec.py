"""A hardened OSC 1.0 packet decoder and a small encoder. Pure: no sockets, no threads, no clocks.

Every byte that reaches the daemon over UDP comes through :func:`decode_packet`. It either returns
a typed :class:`OscMessage` / :class:`OscBundle` or raises :class:`DecodeError` with a short
human-readable reason. It never raises anything else, whatever the input (the fuzz tests hold it
to that), and its cost is linear in the packet size and bounded by the caps below.

What is checked, and why (python-osc, which we use only for *sending* in tests, trips on each):

* packet size: at most :data:`MAX_PACKET_BYTES`, a non-zero multiple of 4;
* OSC-strings are NUL-terminated and padded with NULs to a multiple of 4 bytes, exactly;
  addresses and string arguments must be valid UTF-8 (strict: no surrogates, no replacement);
* an address starts with ``/``; a message without a type tag string is rejected;
* supported type tags: ``i f s b T F N I h d``; anything else (arrays, ``c r m t S``...) is
  rejected with the tag named in the reason; float32/float64 NaN and inf are decoded as they are
  (the command table rejects them);
* blobs: non-negative size, zero padding;
* bundles: ``#bundle`` + 8-byte timetag + elements, each with a positive size that is a multiple
  of 4 and fits; nesting at most :data:`MAX_BUNDLE_DEPTH` deep (checked before descending, so no
  recursion blow-up); at most :data:`MAX_ELEMENTS` messages and bundles in one packet and
  :data:`MAX_ARGS` arguments in one message;
* no trailing bytes after the last argument or element.

Timetags are decoded and kept for information only; nothing here (or anywhere in the control
layer) waits for them: every message is applied as soon as it arrives.
"""

from __future__ import annotations

import numbers
import struct
from dataclasses import dataclass

MAX_PACKET_BYTES = 64 * 1024
MAX_BUNDLE_DEPTH = 8
MAX_ELEMENTS = 1024
MAX_ARGS = 64
MAX_ADDRESS_BYTES = 1024

BUNDLE_TAG = b"#bundle\x00"
IMMEDIATELY = 1  # the OSC timetag meaning "now"

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_INF = float("inf")


class DecodeError(ValueError):
    """A packet that is not well-formed OSC 1.0 (or exceeds a cap).

    ``reason`` is short and safe to send back to the user; ``address`` is the message address when
    decoding got that far (empty otherwise), so error replies can say which message was broken.
    """

    def __init__(self, reason: str, address: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.address = address


class Impulse:
    """The OSC ``I`` ("infinitum"/impulse) argument: a bang without a value. Use :data:`IMPULSE`."""

    _instance: Impulse | None = None

    def __new__(cls) -> Impulse:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "Impulse"

    def __reduce__(self) -> str:
        return "IMPULSE"


IMPULSE = Impulse()

OscArg = int | float | str | bytes | bool | None | Impulse


@dataclass(frozen=True)
class OscMessage:
    address: str
    typetags: str  # without the leading ',' ("" for a message with no arguments)
    args: tuple[OscArg, ...]


@dataclass(frozen=True)
class OscBundle:
    timetag: int  # raw 64-bit NTP timetag; informational only, never waited on
    elements: tuple[OscMessage | OscBundle, ...]


OscPacket = OscMessage | OscBundle


def iter_messages(packet: OscPacket) -> list[OscMessage]:
    """All messages of a packet in order, bundles flattened (depth is already bounded)."""
    out: list[OscMessage] = []
    stack: list[OscPacket] = [packet]
    while stack:
        item = stack.pop()
        if isinstance(item, OscMessage):
            out.append(item)
        else:
            stack.extend(reversed(item.elements))
    return out


# ----------------------------------------------------------------------------------------------
# decoding


class _Reader:
    __slots__ = ("data", "elements")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.elements = 0

    def string(self, pos: int, end: int, what: str, address: str = "") -> tuple[str, int]:
        """Read one OSC-string starting at ``pos``; return it and the aligned position after it."""
        nul = self.data.find(b"\x00", pos, end)
        if nul < 0:
            raise DecodeError(f"{what} is not NUL-terminated", address)
        nxt = (nul + 4) & ~3
        if nxt > end:
            raise DecodeError(f"{what} padding runs past the end", address)
        if self.data.count(b"\x00", nul, nxt) != nxt - nul:
            raise DecodeError(f"{what} padding is not all NUL bytes", address)
        try:
            text = self.data[pos:nul].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{what} is not valid UTF-8", address) from None
        return text, nxt

    def message(self, pos: int, end: int) -> OscMessage:
        self.count_element()
        if self.data.find(b"\x00", pos, min(end, pos + MAX_ADDRESS_BYTES + 1)) < 0:
            if end - pos > MAX_ADDRESS_BYTES:
                raise DecodeError(f"address longer than {MAX_ADDRESS_BYTES} bytes")
            raise DecodeError("address is not NUL-terminated")
        address, pos = self.string(pos, end, "address")
        if pos >= end:
            raise DecodeError("message has no type tag string", address)
        if self.data[pos] != 0x2C:  # ','
            raise DecodeError("message has no type tag string (must start with ',')", address)
        tags_full, pos = self.string(pos, end, "type tag string", address)
        tags = tags_full[1:]
        if len(tags) > MAX_ARGS:
            raise DecodeError(f"more than {MAX_ARGS} arguments", address)
        args: list[OscArg] = []
        data = self.data
        for tag in tags:
            if tag == "i":
                if pos + 4 > end:
                    raise DecodeError("truncated int32 argument", address)
                args.append(_I32.unpack_from(data, pos)[0])
                pos += 4
            elif tag == "f":
                if pos + 4 > end:
                    raise DecodeError("truncated float32 argument", address)
                args.append(_short_f32(data, pos))
                pos += 4
            elif tag == "s":
                value, pos = self.string(pos, end, "string argument", address)
                args.append(value)
            elif tag == "b":
                if pos + 4 > end:
                    raise DecodeError("truncated blob size", address)
                size = _I32.unpack_from(data, pos)[0]
                pos += 4
                if size < 0:
                    raise DecodeError("negative blob size", address)
                nxt = pos + ((size + 3) & ~3)
                if nxt > end:
                    raise DecodeError("truncated blob", address)
                if data.count(b"\x00", pos + size, nxt) != nxt - pos - size:
                    raise DecodeError("blob padding is not all NUL bytes", address)
                args.append(bytes(data[pos : pos + size]))
                pos = nxt
            elif tag == "T":
                args.append(True)
            elif tag == "F":
                args.append(False)
            elif tag == "N":
                args.append(None)
            elif tag == "I":
                args.append(IMPULSE)
            elif tag == "h":
                if pos + 8 > end:
                    raise DecodeError("truncated int64 argument", address)
                args.append(_I64.unpack_from(data, pos)[0])
                pos += 8
            elif tag == "d":
                if pos + 8 > end:
                    raise DecodeError("truncated float64 argument", address)
                args.append(_F64.unpack_from(data, pos)[0])
                pos += 8
            else:
                raise DecodeError(f"unsupported type tag {tag!r}", address)
        if pos != end:
            raise DecodeError(f"{end - pos} trailing bytes after the arguments", address)
        return OscMessage(address, tags, tuple(args))

    def bundle(self, pos: int, end: int, depth: int) -> OscBundle:
        if depth > MAX_BUNDLE_DEPTH:
            raise DecodeError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
        self.count_element()
        if end - pos < 16:
            raise DecodeError("truncated bundle header")
        timetag = _U64.unpack_from(self.data, pos + 8)[0]
        pos += 16
        elements: list[OscMessage | OscBundle] = []
        while pos < end:
            if pos + 4 > end:
                raise DecodeError("truncated bundle element size")
            size = _I32.unpack_from(self.data, pos)[0]
            pos += 4
            if size <= 0 or size % 4:
                raise DecodeError(f"bad bundle element size {size}")
            if pos + size > end:
                raise DecodeError("bundle element runs past the end")
            elements.append(self.packet(pos, pos + size, depth))
            pos += size
        return OscBundle(timetag, tuple(elements))

    def packet(self, pos: int, end: int, depth: int) -> OscPacket:
        first = self.data[pos]
        if first == 0x2F:  # '/'
            return self.message(pos, end)
        if first == 0x23 and self.data.startswith(BUNDLE_TAG, pos):  # '#bundle\0'
            return self.bundle(pos, end, depth + 1)
        raise DecodeError("not a message (address must start with '/') nor a bundle ('#bundle')")

    def count_element(self) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise DecodeError(f"more than {MAX_ELEMENTS} elements in one packet")


def _short_f32(data: bytes, pos: int) -> float:
    """A float32 argument as the shortest double that packs back to the same 4 bytes: a fader at
    0.3 reads 0.3, not 0.30000001192092896 (presets and echoes stay readable). NaN/inf as is."""
    value: float = _F32.unpack_from(data, pos)[0]
    if value != value or value in (_INF, -_INF) or value == int(value):
        return value  # NaN, inf, and whole numbers (a seed sent as a float stays exact)
    raw = data[pos : pos + 4]
    for digits in (6, 7, 8):
        short = float(f"{value:.{digits}g}")
        try:
            if _F32.pack(short) == raw:
                return short
        except OverflowError:
            break
    return value


def decode_packet(data: bytes | bytearray | memoryview) -> OscPacket:
    """Decode one UDP datagram. Raises :class:`DecodeError` (and nothing else) on bad input."""
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if n == 0:
        raise DecodeError("empty packet")
    if n > MAX_PACKET_BYTES:
        raise DecodeError(f"packet larger than {MAX_PACKET_BYTES} bytes")
    if n % 4:
        raise DecodeError(f"packet size {n} is not a multiple of 4")
    return _Reader(data).packet(0, n, 0)


# ----------------------------------------------------------------------------------------------
# encoding


def _pad_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError("OSC strings cannot contain NUL")
    return raw + b"\x00" * (4 - len(raw) % 4)


def _encode_arg(value: OscArg) -> tuple[str, bytes]:
    if value is True:
        return "T", b""
    if value is False:
        return "F", b""
    if value is None:
        return "N", b""
    if isinstance(value, Impulse):
        return "I", b""
    if isinstance(value, numbers.Integral):
        value = int(value)
        if -(2**31) <= value < 2**31:
            return "i", _I32.pack(value)
        if -(2**63) <= value < 2**63:
            return "h", _I64.pack(value)
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, numbers.Real):
        value = float(value)
        try:
            return "f", _F32.pack(value)
        except OverflowError:  # finite but beyond float32
            return "d", _F64.pack(value)
    if isinstance(value, str):
        return "s", _pad_string(value)
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        return "b", _I32.pack(len(raw)) + raw + b"\x00" * (-len(raw) % 4)
    raise TypeError(f"cannot encode {type(value).__name__} as an OSC argument")


def encode_message(address: str, *args: OscArg) -> bytes:
    """Encode one OSC message. bool -> T/F, int -> i (h beyond 32 bits), float -> f, str -> s,
    bytes -> b, None -> N, :data:`IMPULSE` -> I."""
    if not address.startswith("/"):
        raise ValueError(f"OSC address must start with '/': {address!r}")
    tags = [","]
    payload = []
    for arg in args:
        tag, raw = _encode_arg(arg)
        tags.append(tag)
        payload.append(raw)
    return _pad_string(address) + _pad_string("".join(tags)) + b"".join(payload)


def encode_bundle(elements: list[bytes], timetag: int = IMMEDIATELY) -> bytes:
    """Wrap already-encoded messages/bundles in a bundle."""
    parts = [BUNDLE_TAG, _U64.pack(timetag)]
    for element in elements:
        parts.append(_I32.pack(len(element)))
        parts.append(element)
    return b"".join(parts)
