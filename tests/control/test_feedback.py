"""Feedback over real UDP to a listener socket: echo, status, rate-limited errors."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from bridge.control.feedback import FeedbackSender, TokenBucket, parse_target
from bridge.params import PARAMS, default_values
from tests.control.conftest import Listener


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_send_params_echoes_each_on_its_address(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], echo_normalized=False)
    fb.send_params({"guidance": 3.5, "seed": 77, "prompt": "a fox", "bypass": True})
    got = {m.address: m.params for m in listener.recv_all()}
    assert got == {
        "/sd/guidance": [3.5],
        "/sd/seed": [77],
        "/sd/prompt": ["a fox"],
        "/sd/bypass": [1],
    }
    assert fb.stats()["sent"] == 4
    fb.close()


def test_normalized_echo_follows_control_ranges(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], ranges={"guidance": (1.0, 3.0)})
    fb.send_params({"guidance": 2.5, "strength": 0.25, "prompt": "x"})
    got = {m.address: m.params for m in listener.recv_all()}
    assert got["/sd/norm/guidance"] == [0.75]
    assert got["/sd/norm/strength"] == [0.25]
    assert "/sd/norm/prompt" not in got
    fb.close()


def test_full_state_dump_covers_every_parameter(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], echo_normalized=False)
    fb.send_params(default_values())
    got = {m.address: m.params[0] for m in listener.recv_all()}
    assert set(got) == {spec.address for spec in PARAMS.values()}
    for spec in PARAMS.values():
        expected: Any = spec.default
        if spec.kind is bool:
            expected = int(spec.default)
        elif spec.kind is float:
            expected = f32(spec.default)
        assert got[spec.address] == expected, spec.address
    fb.close()


def test_send_status(listener: Listener) -> None:
    fb = FeedbackSender([listener.target])
    fb.send_status(
        {
            "fps": 29.5,
            "latency_ms": 41.25,
            "source": "ndi: CAM 1",
            "preset": "ambient",
            "dropped": 3,
            "Bad Key": 1,
            "gone": None,
        }
    )
    got = {m.address: m.params for m in listener.recv_all()}
    assert got == {
        "/sd/status/fps": [29.5],
        "/sd/status/latency_ms": [41.25],
        "/sd/status/source": ["ndi: CAM 1"],
        "/sd/status/preset": ["ambient"],
        "/sd/status/dropped": [3],
    }
    assert fb.stats()["skipped"] == 1
    fb.close()


def test_maybe_send_status_keeps_its_rate(listener: Listener) -> None:
    clock = FakeClock()
    fb = FeedbackSender([listener.target], status_hz=2.0, clock=clock)
    calls = []

    def status() -> dict[str, Any]:
        calls.append(clock.t)
        return {"fps": 30.0}

    sent = 0
    for _ in range(100):  # 5 s at 20 calls per second
        sent += fb.maybe_send_status(status)
        clock.t += 0.05
    assert sent == 10 and len(calls) == 10  # 2 Hz; not even built when not due
    assert len(listener.recv_all()) == 10
    clock.t += 60  # a long pause does not cause a burst afterwards
    assert fb.maybe_send_status(status) and not fb.maybe_send_status(status)
    fb.close()


def test_error_replies_token_bucket_and_suppressed_count(listener: Listener) -> None:
    clock = FakeClock()
    fb = FeedbackSender([listener.target], error_rate=2.0, error_burst=3, clock=clock)
    results = [fb.send_error("/sd/x", f"bad {i}") for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    clock.t += 0.5  # one token back
    assert fb.send_error("/sd/y", "later") is True
    assert fb.send_error("/sd/y", "again") is False
    msgs = listener.recv_all()
    assert [m.params for m in msgs] == [
        ["/sd/x", "bad 0"],
        ["/sd/x", "bad 1"],
        ["/sd/x", "bad 2"],
        ["/sd/y", "later (7 earlier errors suppressed)"],
    ]
    assert fb.stats()["errors_suppressed"] == 8 and fb.stats()["errors_sent"] == 4
    fb.close()


def test_every_target_gets_every_message() -> None:
    a, b = Listener(), Listener()
    try:
        fb = FeedbackSender([a.target, ("127.0.0.1", int(b.target.split(":")[1])), a.target])
        assert len(fb.targets) == 2  # duplicates dropped
        fb.send_params({"mix": 0.5})
        assert {m.address for m in a.recv_all()} == {"/sd/mix", "/sd/norm/mix"}
        assert {m.address for m in b.recv_all()} == {"/sd/mix", "/sd/norm/mix"}
        fb.close()
    finally:
        a.close()
        b.close()


def test_network_errors_never_raise() -> None:
    class Broken:
        def resolve(self, host: str, port: int) -> Any:
            return (host, port)

        def send(self, data: bytes, dest: Any) -> None:
            raise OSError(101, "Network is unreachable")

        def close(self) -> None:
            raise OSError("already closed")

    fb = FeedbackSender(["10.9.9.9:9000"], transport=Broken())
    fb.send_params({"seed": 1})
    fb.send_status({"fps": 1.0})
    assert fb.send_error("/sd/x", "bad") is True
    fb.close()
    assert fb.stats()["send_errors"] == 4 and fb.stats()["sent"] == 0  # seed + its norm echo


def test_nobody_listening_is_fine() -> None:
    lst = Listener()
    target = lst.target
    lst.close()  # the port is now closed: ICMP unreachable comes back on loopback
    fb = FeedbackSender([target])
    for _ in range(20):
        fb.send_params({"seed": 1})
    fb.close()


def test_unencodable_values_are_skipped_not_raised(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], echo_normalized=False)
    fb.send_params({"seed": 2**80, "nope": 1, "prompt": "nul\x00inside"})
    got = {m.address: m.params for m in listener.recv_all()}
    assert got == {"/sd/prompt": ["nulinside"]}
    assert fb.stats()["skipped"] == 2
    fb.close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1:9401", ("127.0.0.1", 9401)),
        ("studio-pc.local:8000", ("studio-pc.local", 8000)),
        ("[::1]:9401", ("::1", 9401)),
        (" 10.0.0.5:1 ", ("10.0.0.5", 1)),
    ],
)
def test_parse_target(spec: str, expected: tuple[str, int]) -> None:
    assert parse_target(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "127.0.0.1",
        ":9000",
        "host:",
        "host:0",
        "host:70000",
        "host:x",
        "::1:9000",
        "[::1]9000",
        "[::1",
    ],
)
def test_parse_target_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="feedback target"):
        parse_target(spec)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="port must be"):
        FeedbackSender([("127.0.0.1", 0)])
    with pytest.raises(ValueError, match="osc range for 'prompt'"):
        FeedbackSender([], ranges={"prompt": (0, 1)})
    with pytest.raises(ValueError, match="status_hz"):
        FeedbackSender([], status_hz=0)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_nan_status_values_still_go_out(listener: Listener) -> None:
    fb = FeedbackSender([listener.target])
    fb.send_status({"fps": math.nan})
    [msg] = listener.recv_all()
    assert msg.address == "/sd/status/fps" and math.isnan(msg.params[0])
    fb.close()


def _recv_datagrams(listener: Listener, quiet: float = 0.2) -> list[bytes]:
    out = []
    while True:
        listener.sock.settimeout(quiet)
        try:
            out.append(listener.sock.recvfrom(65536)[0])
        except TimeoutError:
            return out


def test_bundled_echo_is_one_datagram_that_python_osc_reads_as_the_same_messages(listener: Listener) -> None:
    from pythonosc.osc_bundle import OscBundle

    fb = FeedbackSender([listener.target], bundle=True)
    values = {"guidance": 2.5, "strength": 0.25, "seed": 9, "prompt": "x", "bypass": False}
    fb.send_params(values)
    datagrams = _recv_datagrams(listener)
    assert len(datagrams) == 1 and fb.stats()["sent"] == 1
    assert OscBundle.dgram_is_bundle(datagrams[0])
    got = [(m.address, m.params) for m in OscBundle(datagrams[0])]
    # the same messages, in the same order, as the unbundled echo sends one by one
    plain = FeedbackSender([listener.target])
    plain.send_params(values)
    want = [(m.address, m.params) for m in listener.recv_all()]
    assert got == want and len(want) == 8  # 5 values + 3 /sd/norm forms (not prompt, seed is an int)
    fb.close()
    plain.close()


def test_bundles_stay_under_the_size_limit_keep_order_and_send_a_lone_message_plain(listener: Listener) -> None:
    from pythonosc.osc_bundle import OscBundle
    from pythonosc.osc_message import OscMessage as PyOscMessage

    fb = FeedbackSender([listener.target], bundle=True, echo_normalized=False, max_bundle_bytes=200)
    fb.send_params(default_values())
    datagrams = _recv_datagrams(listener)
    assert len(datagrams) > 1
    seen = []
    for d in datagrams:
        if OscBundle.dgram_is_bundle(d):
            assert len(d) <= 200
            seen += [m.address for m in OscBundle(d)]
        else:
            seen.append(PyOscMessage(d).address)
    assert seen == [PARAMS[name].address for name in default_values()]
    fb.send_params({"guidance": 1.5})  # one message: plain, no bundle around it
    (single,) = _recv_datagrams(listener)
    assert not OscBundle.dgram_is_bundle(single) and PyOscMessage(single).address == "/sd/guidance"
    fb.close()


def test_bundled_status_is_one_datagram(listener: Listener) -> None:
    from pythonosc.osc_bundle import OscBundle

    fb = FeedbackSender([listener.target], bundle=True)
    fb.send_status({"fps": 29.5, "state": "live", "beat": (3, 0.5)})
    (d,) = _recv_datagrams(listener)
    assert {m.address: m.params for m in OscBundle(d)} == {
        "/sd/status/fps": [29.5], "/sd/status/state": ["live"], "/sd/status/beat": [3, 0.5]}
    fb.close()
