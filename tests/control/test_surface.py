"""The command table without sockets: ranges, batching rules, reasons, docs coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.control.codec import encode_bundle, encode_message
from bridge.control.surface import (
    MAX_REPORTED_ADDRESS,
    ControlSurface,
    DumpState,
    Rejected,
    SetParams,
    StepPreset,
    validate_ranges,
)
from bridge.params import NORMALIZABLE, PARAMS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "osc.md"


def test_adjacent_set_params_merge_later_wins_order_kept() -> None:
    s = ControlSurface()
    packet = encode_bundle(
        [
            encode_message("/sd/seed", 1),
            encode_message("/sd/strength", 0.2),
            encode_message("/sd/seed", 2),
            encode_message("/sd/state"),
            encode_message("/sd/preset/next", 0.0),  # a release: nothing
            encode_message("/sd/mix", 0.1),
            encode_message("/sd/preset/prev"),
        ]
    )
    assert s.process(packet) == [
        SetParams({"seed": 2, "strength": 0.2}),
        DumpState(),
        SetParams({"mix": 0.1}),
        StepPreset(-1),
    ]


def test_empty_bundle_is_an_empty_batch() -> None:
    assert ControlSurface().process(encode_bundle([])) == []


def test_rejected_addresses_are_cut_for_replies() -> None:
    long = "/sd/" + "a" * 500
    result = ControlSurface().process(encode_message(long, 1))
    assert isinstance(result, Rejected)
    assert len(result.address) == MAX_REPORTED_ADDRESS + 3 and result.address.endswith("...")


def test_malformed_is_flagged_and_keeps_the_address() -> None:
    result = ControlSurface().process(b"/sd/prompt\x00\x00,s\x00\x00\xff\x00\x00\x00")
    assert result == Rejected("/sd/prompt", "string argument is not valid UTF-8", malformed=True)


def test_norm_never_overshoots_the_range() -> None:
    s = ControlSurface(ranges={"strength": (0.1, 0.7), "guidance": (0.3, 19.9)})
    for address, name, hi in [
        ("/sd/norm/strength", "strength", 0.7),
        ("/sd/norm/guidance", "guidance", 19.9),
    ]:
        [cmd] = s.process(encode_message(address, 1.0))  # type: ignore[misc]
        assert isinstance(cmd, SetParams) and cmd.values[name] <= hi


def test_validate_ranges() -> None:
    assert validate_ranges({"guidance": (1, 3), "seed": [0, 10]}) == {
        "guidance": (1.0, 3.0),
        "seed": (0.0, 10.0),
    }
    assert validate_ranges(None) == {}
    for bad, match in [
        ({"prompt": (0, 1)}, "not a numeric parameter"),
        ({"bypass": (0, 1)}, "not a numeric parameter"),
        ({"nope": (0, 1)}, "not a numeric parameter"),
        ({"guidance": (0, 25)}, "outside the hard range"),
        ({"guidance": (-1, 2)}, "outside the hard range"),
        ({"guidance": (2, 2)}, "lo and hi are both"),
        ({"guidance": (float("nan"), 2)}, "not a finite number"),
        ({"guidance": ("1", 2)}, "not a finite number"),
        ({"guidance": (True, 2)}, "not a finite number"),
        ({"guidance": 3}, "expected \\[lo, hi\\]"),
        ({"guidance": (1, 2, 3)}, "expected \\[lo, hi\\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            validate_ranges(bad)  # type: ignore[arg-type]


def test_table_covers_every_parameter() -> None:
    addresses = set(ControlSurface().addresses)
    assert {p.address for p in PARAMS.values()} <= addresses
    assert set(NORMALIZABLE) <= addresses
    assert {
        "/sd/preset",
        "/sd/preset/next",
        "/sd/preset/prev",
        "/sd/preset/save",
        "/sd/state",
    } <= addresses


def test_docs_list_every_address_and_default() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for address in ControlSurface().addresses:
        if address.startswith("/sd/lfo/"):  # documented once, as /sd/lfo/<param>/<field>
            assert f"`/sd/lfo/<param>/{address.rsplit('/', 1)[1]}`" in text, address
        elif address not in NORMALIZABLE:
            assert f"`{address}`" in text, address
    for spec in PARAMS.values():
        if spec.kind in (int, float):
            assert f"{spec.default:g}" in text
    for status in ("fps", "latency_ms", "source", "preset", "dropped"):
        assert f"/sd/status/{status}" in text
    assert "/sd/error" in text and "/sd/norm/" in text


def test_fast_path_gives_exactly_what_the_full_path_gives() -> None:
    """Faders take a shortcut through the table; it must agree with the full decoder on every
    datagram, accepted or refused (random values, every parameter, both numeric tags)."""
    import random
    import struct

    from bridge.control.codec import decode_packet, encode_message
    from bridge.params import NORMALIZABLE, PARAMS

    # a narrowed control range too: the /sd/norm shortcut must map onto the configured range
    surface = ControlSurface({"guidance": [0.5, 3.0], "seed": [10, 20]})
    rng = random.Random(3)
    packets = []
    addresses = [spec.address for spec in PARAMS.values()] + list(NORMALIZABLE)
    for address in addresses:
        for _ in range(200):
            x = rng.choice([rng.uniform(-1, 25), rng.random(), 0.0, 1.0, float(rng.randrange(-3, 3)),
                            float("nan"), float("inf"), 1e30, rng.randrange(0, 2**31)])
            packets.append(encode_message(address, float(x) if isinstance(x, float) else x))
            packets.append(encode_message(address, int(x) if x == x and abs(x) < 2**31 else 0))
        packets.append(encode_message(address, "text"))
        packets.append(encode_message(address, 1.0, 2.0))
        good = encode_message(address, 0.5)
        packets.append(good[:-4])  # truncated
        packets.append(good.replace(b"\x00,", b"\x01,", 1))  # broken padding
    packets.append(struct.pack(">4s", b"/sd/") + b"\x00" * 4 + b",f\x00\x00" + b"\x00" * 4)
    fast_hits = 0
    for data in packets:
        got = surface.process(data)
        full = surface.validate(decode_packet(data)) if _decodes(data) else None
        if surface._fast_path(data) is not None:
            fast_hits += 1
            assert got == full, data
        elif full is not None:
            assert got == full, data
    assert fast_hits > 1000
    norm_hits = [d for d in packets if d.startswith(b"/sd/norm/") and surface._fast_path(d) is not None]
    assert len(norm_hits) > 300  # the /sd/norm forms take the shortcut too


def _decodes(data: bytes) -> bool:
    from bridge.control.codec import DecodeError, decode_packet

    try:
        decode_packet(data)
    except DecodeError:
        return False
    return True
