"""The tempo, quantise and LFO addresses over real UDP: an OscServer on loopback feeds the live
controller (on a manual clock), whose echoes go out through a FeedbackSender to a listening socket."""

from __future__ import annotations

import time

import pytest

from bridge.control.feedback import FeedbackSender
from bridge.control.server import OscServer
from bridge.control.surface import ControlSurface
from tests.control.conftest import Listener, wait_until
from tests.tempo.rig import FPS, Rig


@pytest.fixture
def wired(tmp_path, request):
    listener = Listener()
    fb = FeedbackSender([listener.target])
    rig = Rig(tmp_path, real_clock=getattr(request, "param", False))
    rig.ctl._feedback = fb.send_params
    rig.ctl._status = lambda key, value: fb.send_status({key: value})
    errors: list[tuple[str, str]] = []
    server = OscServer("127.0.0.1", 0, rig.ctl.submit, lambda a, r: errors.append((a, r)), surface=ControlSurface())
    server.start()
    from pythonosc.udp_client import SimpleUDPClient

    client = SimpleUDPClient("127.0.0.1", server.port)
    yield rig, client, server, listener, errors
    server.stop()
    client._sock.close()
    fb.close()
    listener.close()
    rig.close()


def pump(rig: Rig, server: OscServer, sent: int) -> None:
    """Wait until the server has handled ``sent`` datagrams, then tick (the clock stands still)."""
    assert wait_until(lambda: server.stats()["accepted"] + server.stats()["rejected"] >= sent)
    rig.ctl.tick()


def received(listener: Listener) -> dict[str, list[list]]:
    out: dict[str, list[list]] = {}
    for msg in listener.recv_all(0.2):
        out.setdefault(msg.address, []).append(list(msg.params))
    return out


def test_tempo_lfo_and_quantised_recall_over_udp(wired):
    rig, client, server, listener, errors = wired
    rig.step()  # off the bar line (a recall sent exactly on a boundary starts at once)
    client.send_message("/sd/tempo/bpm", 150.0)
    client.send_message("/sd/lfo/guidance/shape", "square")
    client.send_message("/sd/lfo/guidance/rate", 1.0)
    client.send_message("/sd/lfo/guidance/depth", 0.5)
    client.send_message("/sd/preset", ["cut", "bar"])
    pump(rig, server, 5)
    got = received(listener)
    assert got["/sd/tempo/bpm"] == [[150.0]]
    assert got["/sd/lfo/guidance/shape"] == [["square"]] and got["/sd/lfo/guidance/depth"] == [[0.5]]
    assert rig.ctl.tempo.bpm == 150.0 and rig.ctl.tempo_status()["waiting_recall"] == "cut"
    # at 150 bpm from here, the next bar starts at:
    bar = rig.now + (4.0 - rig.ctl.tempo.beat_at(rig.now)) * 60.0 / 150.0
    while rig.now + 1.0 / FPS < bar:
        rig.step()
        assert rig.ctl.current_preset is None
    rig.step()
    assert rig.ctl.current_preset == "cut" and bar <= rig.now < bar + 1.0 / FPS
    got = received(listener)
    beats = got["/sd/status/beat"]
    assert [b[0] for b in beats] == [1, 2, 3, 4] and all(isinstance(b[0], int) for b in beats)
    assert 0.0 <= beats[-1][1] < 2.5 / FPS  # beat 4 starts the bar: phase 0 plus under a frame (2.5 beats/s)
    assert got["/sd/guidance"] == [[3.0]]  # the recall's fader value, once; the LFO is never echoed
    assert rig.pipe.guidance_scale in (2.5, 3.5)
    assert errors == []


@pytest.mark.parametrize("wired", [True], indirect=True)  # taps are stamped on the real clock
def test_tap_tempo_and_bad_values_over_udp(wired):
    rig, client, server, listener, errors = wired
    for _ in range(4):
        client.send_message("/sd/tempo/tap", [])
        time.sleep(0.25)  # stamped on receipt: the taps' real spacing sets the tempo
    pump(rig, server, 4)
    bpm = received(listener)["/sd/tempo/bpm"][-1][0]
    assert 100.0 <= bpm <= 260.0  # 0.25 s apart, plus scheduling delays on a busy machine
    assert rig.ctl.values["bpm"] == pytest.approx(bpm, abs=1e-4)  # (the echo is a float32)
    client.send_message("/sd/lfo/guidance/shape", "wobble")
    client.send_message("/sd/tempo/bpm", 5000.0)
    client.send_message("/sd/preset", ["cut", "soon"])
    assert wait_until(lambda: len(errors) == 3)
    reasons = dict(errors)
    assert "shape should be one of" in reasons["/sd/lfo/guidance/shape"]
    assert "outside 20..999" in reasons["/sd/tempo/bpm"]
    assert "now, off, beat, bar" in reasons["/sd/preset"]
    rig.ctl.tick()
    assert rig.ctl.lfos == {} and rig.ctl.values["bpm"] == pytest.approx(bpm, abs=1e-4)
    assert rig.ctl.current_preset is None


def test_state_dump_echoes_lfos(wired):
    rig, client, server, listener, errors = wired
    client.send_message("/sd/lfo/delta/depth_norm", 0.5)
    pump(rig, server, 1)
    received(listener)
    client.send_message("/sd/state", [])
    pump(rig, server, 2)
    got = received(listener)
    assert got["/sd/lfo/delta/depth_norm"] == [[0.5]] and got["/sd/lfo/delta/shape"] == [["sine"]]
    assert got["/sd/tempo/bpm"] == [[120.0]]
