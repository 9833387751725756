"""The OSC contract end to end: python-osc client -> real UDP on loopback -> OscServer."""

from __future__ import annotations

import math
import queue
import socket
import threading
import time
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.control.codec import encode_bundle, encode_message
from bridge.control.feedback import FeedbackSender
from bridge.control.server import OscServer, parse_allow
from bridge.control.surface import ControlSurface, RecallPreset, SetParams, StepPreset
from bridge.params import NORMALIZABLE
from tests.control.cases import BAD, HAPPY, RELEASES, Typed, case_id
from tests.control.conftest import (
    Harness,
    Listener,
    close_harness,
    handled,
    make_harness,
    wait_until,
)


def build(address: str, typed: Typed) -> Any:
    b = OscMessageBuilder(address)
    for tag, value in typed:
        b.add_arg(value, tag)
    return b.build()


def send_typed(h: Harness, address: str, typed: Typed) -> None:
    h.client.send(build(address, typed))


def test_every_address_has_cases() -> None:
    addresses = set(ControlSurface().addresses)
    assert {c[0] for c in HAPPY} == addresses
    assert addresses <= {c[0] for c in BAD}


@pytest.mark.parametrize("case", HAPPY, ids=case_id)
def test_happy_path(harness: Harness, case: tuple[str, Typed, list[Any]]) -> None:
    address, typed, expected = case
    send_typed(harness, address, typed)
    assert harness.batch() == expected
    assert harness.server.stats()["accepted"] == 1
    assert harness.errors.empty()


@pytest.mark.parametrize("case", BAD, ids=case_id)
def test_rejection(harness: Harness, case: tuple[str, Typed, str]) -> None:
    address, typed, why = case
    send_typed(harness, address, typed)
    got_address, reason = harness.error()
    assert got_address == address
    assert why in reason
    stats = harness.server.stats()
    assert stats["rejected"] == 1 and stats["accepted"] == 0
    assert harness.batches.empty()


@pytest.mark.parametrize("case", RELEASES, ids=case_id)
def test_trigger_release_is_accepted_and_does_nothing(harness: Harness, case: Any) -> None:
    address, typed = case
    send_typed(harness, address, typed)
    stats = harness.settle(1)
    assert stats["accepted"] == 1 and stats["rejected"] == 0
    assert harness.batches.empty() and harness.errors.empty()


def test_touchdesigner_style_bundle_is_one_batch(any_harness: Harness) -> None:
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address, value in [
        ("/sd/strength", 0.4),
        ("/sd/guidance", 2.0),
        ("/sd/prompt/mix", 0.5),
        ("/sd/seed", 7),
        ("/sd/preset/next", 1.0),
        ("/sd/mix", 0.25),
    ]:
        b = OscMessageBuilder(address)
        b.add_arg(value)
        bundle.add_content(b.build())
    any_harness.client.send(bundle.build())
    batch = any_harness.batch()
    assert batch == [
        SetParams({"strength": 0.4, "guidance": 2.0, "prompt_mix": 0.5, "seed": 7}),
        StepPreset(1),
        SetParams({"mix": 0.25}),
    ]
    with pytest.raises(queue.Empty):
        any_harness.batches.get(timeout=0.05)  # delivered as ONE batch
    assert any_harness.server.stats()["accepted"] == 1


def test_nested_bundles_flatten_into_one_batch(any_harness: Harness) -> None:
    inner = encode_bundle([encode_message("/sd/seed", 3), encode_message("/sd/mix", 0.5)])
    any_harness.send_raw(encode_bundle([encode_message("/sd/strength", 0.1), inner]))
    assert any_harness.batch() == [SetParams({"strength": 0.1, "seed": 3, "mix": 0.5})]


def test_bundle_with_one_bad_element_is_rejected_whole(any_harness: Harness) -> None:
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address, value in [
        ("/sd/strength", 0.4),
        ("/sd/guidance", math.nan),
        ("/sd/seed", "x"),
        ("/sd/mix", 0.5),
    ]:
        b = OscMessageBuilder(address)
        b.add_arg(value)
        bundle.add_content(b.build())
    any_harness.client.send(bundle.build())
    address, reason = any_harness.error()
    assert address == "/sd/guidance" and "finite" in reason  # the first bad element
    assert any_harness.errors.empty()  # one reply per rejected packet
    assert any_harness.batches.empty()  # nothing applied, not even /sd/strength
    assert any_harness.server.stats()["rejected"] == 1


def test_far_future_timetag_is_applied_immediately(harness: Harness) -> None:
    bundle = OscBundleBuilder(time.time() + 365 * 24 * 3600)
    b = OscMessageBuilder("/sd/strength")
    b.add_arg(0.9)
    bundle.add_content(b.build())
    t0 = time.monotonic()
    harness.client.send(bundle.build())
    assert harness.batch(timeout=1.0) == [SetParams({"strength": 0.9})]
    assert time.monotonic() - t0 < 1.0  # not a year
    # the maximum timetag too
    harness.send_raw(encode_bundle([encode_message("/sd/seed", 9)], timetag=2**64 - 1))
    assert harness.batch(timeout=1.0) == [SetParams({"seed": 9})]


def test_norm_mapping_with_custom_ranges(server_kind: str) -> None:
    surface = ControlSurface(
        ranges={"guidance": (1.0, 3.0), "strength": (0.8, 0.2), "seed": (100, 200)}
    )
    h = make_harness(surface=surface, kind=server_kind)
    try:
        for address, x, expected in [
            ("/sd/norm/guidance", 0.0, {"guidance": 1.0}),
            ("/sd/norm/guidance", 0.5, {"guidance": 2.0}),
            ("/sd/norm/guidance", 1.0, {"guidance": 3.0}),
            ("/sd/norm/strength", 0.0, {"strength": 0.8}),  # an inverted range
            ("/sd/norm/strength", 1.0, {"strength": 0.2}),
            ("/sd/norm/seed", 0.5, {"seed": 150}),
            ("/sd/norm/delta", 0.5, {"delta": 1.0}),  # no custom range: the default 0..2
        ]:
            h.send(address, x)
            [cmd] = h.batch()
            assert isinstance(cmd, SetParams)
            assert cmd.values == pytest.approx(expected), address
        h.send("/sd/norm/guidance", 1.01)
        assert "outside 0..1" in h.error()[1]
    finally:
        close_harness(h)


def test_every_normalizable_parameter_maps_onto_its_default_control_range(harness: Harness) -> None:
    for address, spec in NORMALIZABLE.items():
        harness.send(address, 0.25)
        [cmd] = harness.batch()
        assert isinstance(cmd, SetParams)
        lo, hi = spec.control_range
        assert spec.lo <= lo < hi <= spec.hi  # inside the hard range
        expected = lo + (hi - lo) * 0.25
        assert cmd.values[spec.name] == pytest.approx(
            expected, abs=0.5 if spec.kind is int else 1e-9
        )


# -- allow-list ---------------------------------------------------------------------------------


def test_allow_list_by_ip_port_and_cidr(server_kind: str) -> None:
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    friend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    friend.bind(("127.0.0.1", 0))
    friend_port = friend.getsockname()[1]
    h = make_harness(allow=[f"127.0.0.1:{friend_port}", "10.0.0.0/8"], kind=server_kind)
    try:
        stranger.sendto(encode_message("/sd/seed", 1), h.addr)
        stranger.sendto(encode_message("/sd/nope"), h.addr)
        friend.sendto(encode_message("/sd/seed", 2), h.addr)
        assert h.batch() == [SetParams({"seed": 2})]
        stats = h.settle(3)
        assert stats["ignored"] == 2 and stats["accepted"] == 1 and stats["rejected"] == 0
        assert h.errors.empty()  # strangers get no reply
    finally:
        close_harness(h)
        stranger.close()
        friend.close()

    h = make_harness(allow=["127.0.0.0/8"], kind=server_kind)
    try:
        h.send("/sd/seed", 5)
        assert h.batch() == [SetParams({"seed": 5})]
    finally:
        close_harness(h)


@pytest.mark.parametrize(
    ("spec", "network", "port"),
    [
        ("192.168.1.20", "192.168.1.20/32", None),
        ("192.168.1.20:9000", "192.168.1.20/32", 9000),
        ("10.0.0.0/8", "10.0.0.0/8", None),
        ("::1", "::1/128", None),
        ("[::1]:53", "::1/128", 53),
        ("fd00::/8", "fd00::/8", None),
        (" 10.1.2.3 ", "10.1.2.3/32", None),
    ],
)
def test_parse_allow(spec: str, network: str, port: int | None) -> None:
    rule = parse_allow(spec)
    assert str(rule.network) == network and rule.port == port


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "localhost",
        "1.2.3.4:0",
        "1.2.3.4:99999",
        "1.2.3.4:x",
        "300.1.1.1",
        "[::1",
        "[::1]x",
        "10.0.0.0/33",
    ],
)
def test_parse_allow_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry|empty allow-list"):
        parse_allow(spec)


def test_bad_allow_list_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="allow-list entry 'my-laptop'"):
        OscServer("127.0.0.1", 0, lambda b: None, None, ["my-laptop"])


# -- error replies ------------------------------------------------------------------------------


def test_error_replies_reach_feedback_targets_rate_limited(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], error_burst=3, error_rate=0.01)
    h = make_harness(on_error=fb.send_error)
    try:
        for i in range(10):
            h.send("/sd/strength", 2.0 + i)
        stats = h.settle(10)
        assert stats["rejected"] == 10
        # the reply (or its suppression) happens in on_error, just after the count
        assert wait_until(
            lambda: sum(fb.stats()[k] for k in ("errors_sent", "errors_suppressed")) == 10
        )
        replies = listener.recv_all()
        assert [m.address for m in replies] == ["/sd/error"] * 3
        assert replies[0].params == ["/sd/strength", "2.0 is outside 0..1"]
        assert fb.stats()["errors_sent"] == 3 and fb.stats()["errors_suppressed"] == 7
    finally:
        close_harness(h)
        fb.close()


# -- robustness ---------------------------------------------------------------------------------


GARBAGE = [
    b"",
    b"\x00" * 4,
    b"\xff" * 64,
    b"/sd/strength",  # no padding
    b"/sd/strength\x00\x00\x00\x00",  # no type tags
    encode_message("/sd/strength", 0.5)[:-2],  # truncated
    b"/sd/\xff\xfe\x00\x00,f\x00\x00\x00\x00\x00\x00",  # non-UTF-8 address
    encode_message("/" + "*" * 28 + "x"),  # the python-osc regex freeze
    b"#bundle\x00" + bytes(8) + b"\x7f\xff\xff\xff",  # element size lies
    b"#bundle\x00" + bytes(8) + b"\x00\x00\x00\x04/\x00\x00\x00",
    encode_message("/sd/prompt", b"blob"),
    encode_message("/sd/seed", 2**62),
]


def _deep(depth: int) -> bytes:
    data = encode_message("/sd/seed", 1)
    for _ in range(depth):
        data = encode_bundle([data])
    return data


def test_server_survives_garbage_and_stays_responsive(any_harness: Harness) -> None:
    packets = [*GARBAGE, _deep(50), _deep(400)]
    for data in packets:
        any_harness.send_raw(data)
    stats = any_harness.settle(len(packets))
    assert stats["accepted"] == 0
    assert stats["malformed"] + stats["rejected"] == len(packets)
    assert any_harness.server.running
    t0 = time.monotonic()
    any_harness.send("/sd/strength", 0.33)
    assert any_harness.batch(timeout=1.0) == [SetParams({"strength": 0.33})]
    assert time.monotonic() - t0 < 1.0


def test_callback_exceptions_do_not_kill_the_server(server_cls: Any) -> None:
    seen: list[Any] = []

    def explode(batch: list[Any]) -> None:
        seen.append(batch)
        if len(seen) == 1:
            raise RuntimeError("render queue exploded")

    server = server_cls("127.0.0.1", 0, explode, lambda a, r: 1 / 0)
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # (values arriving in one receive slice are handed over as one batch: wait in between)
        client.sendto(encode_message("/sd/seed", 1), ("127.0.0.1", server.port))
        assert wait_until(lambda: len(seen) == 1)
        client.sendto(encode_message("/sd/nope"), ("127.0.0.1", server.port))
        client.sendto(encode_message("/sd/seed", 2), ("127.0.0.1", server.port))
        assert wait_until(lambda: len(seen) == 2)
        # (the receiver process reports its counters just after the hand-over they count)
        assert wait_until(lambda: server.stats()["callback_errors"] == 2 and server.stats()["accepted"] == 2)
        assert server.running
    finally:
        server.stop()
        client.close()


def test_one_slice_of_values_is_one_hand_over_in_arrival_order() -> None:
    """Parameter changes that arrive within one receive slice reach the callback as one batch,
    latest value per parameter, ordered by latest arrival; a command (a recall) in between is
    handed over after the values that came before it and before those that came after it."""
    seen: list[Any] = []
    gate, entered = threading.Event(), threading.Event()

    def on_batch(batch: list[Any]) -> None:
        entered.set()
        gate.wait(5)
        seen.append(batch)

    server = OscServer("127.0.0.1", 0, on_batch)
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # the first datagram's hand-over blocks until every other one is in the socket buffer
        client.sendto(encode_message("/sd/seed", 1), ("127.0.0.1", server.port))
        assert entered.wait(5)
        for address, value in (("/sd/strength", 0.25), ("/sd/guidance", 2.0), ("/sd/strength", 0.5),
                               ("/sd/preset", "neon"), ("/sd/guidance", 3.0), ("/sd/seed", 7)):
            client.sendto(encode_message(address, value), ("127.0.0.1", server.port))
        time.sleep(0.05)
        gate.set()
        assert wait_until(lambda: sum(len(b) for b in seen) >= 4)
        time.sleep(0.05)
        flat = [cmd for batch in seen for cmd in batch]
        assert flat[0] == SetParams({"seed": 1})
        assert flat[1] == SetParams({"guidance": 2.0, "strength": 0.5})
        assert flat[2] == RecallPreset("neon")
        assert flat[3] == SetParams({"guidance": 3.0, "seed": 7})
        assert len(flat) == 4
        assert server.stats()["accepted"] == 7
    finally:
        gate.set()
        server.stop()
        client.close()


def test_stop_is_prompt_and_restart_works(server_cls: Any) -> None:
    server = server_cls("127.0.0.1", 0, lambda b: None)
    server.start()
    assert server.rcvbuf_granted > 0
    t0 = time.monotonic()
    server.stop()
    if server_cls is OscServer:
        assert time.monotonic() - t0 < 1.0  # woken by the self-pipe, typically ~1 ms
    assert not server.running
    server.stop()  # idempotent
    server.start()
    assert server.running
    server.stop()


def test_port_in_use_is_a_clear_error(server_cls: Any) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        server = server_cls("127.0.0.1", busy.getsockname()[1], lambda b: None)
        with pytest.raises(OSError, match="cannot listen for OSC on 127.0.0.1"):
            server.start()
        assert not server.running
    finally:
        busy.close()


def test_start_twice_is_refused(any_harness: Harness) -> None:
    with pytest.raises(RuntimeError):
        any_harness.server.start()


def test_defaults_match_the_contract() -> None:
    from bridge.control.server import DEFAULT_HOST, DEFAULT_PORT

    assert (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 9400)


def test_flood_every_datagram_is_received_or_counted_as_a_kernel_drop(server_cls: Any) -> None:
    """Unpaced flood: the receiver keeps up as far as it can; what the kernel dropped is measured
    (Linux), so received + drops == sent, and the server still answers afterwards."""
    batches: list[Any] = []
    server = server_cls("127.0.0.1", 0, batches.append)
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = ("127.0.0.1", server.port)
    packets = [encode_message("/sd/strength", i / 100) for i in range(100)]
    sent = 20_000
    try:
        for i in range(sent):
            client.sendto(packets[i % 100], dest)
        drops = server.kernel_drops()

        def settled() -> bool:
            return handled(server.stats()) + (drops or 0) >= sent

        assert wait_until(settled, 5.0) or drops is None
        stats = server.stats()
        if drops is not None:
            assert stats["received"] + server.kernel_drops() == sent  # type: ignore[operator]
        assert stats["accepted"] == stats["received"] and stats["rejected"] == 0
        client.sendto(encode_message("/sd/seed", 77), dest)
        assert wait_until(lambda: bool(batches) and batches[-1] == [SetParams({"seed": 77})])
    finally:
        server.stop()
        client.close()


def test_stop_from_inside_a_callback_does_not_deadlock(server_cls: Any) -> None:
    holder: list[Any] = []
    server = server_cls("127.0.0.1", 0, lambda batch: holder[0].stop())
    holder.append(server)
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(encode_message("/sd/seed", 1), ("127.0.0.1", server.port))
        assert wait_until(lambda: not server.running)
        assert server.stats()["callback_errors"] == 0
    finally:
        server.stop()
        client.close()
