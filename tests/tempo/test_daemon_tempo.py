"""Tempo in the running daemon (tiny model, pattern source, real OSC and feedback over UDP):
beats on /sd/status/beat, a bar-quantised recall, an LFO on the dry/wet mix that the render loop
uses while feedback keeps the fader value, and the status page's tempo figures."""

from __future__ import annotations

import time

import pytest
from pythonosc.udp_client import SimpleUDPClient

from bridge.daemon import Daemon, DaemonOptions
from bridge.tempo import bar_phase
from tests.daemon.conftest import FeedbackListener, daemon_config, preset_dir, wait_until  # noqa: F401


@pytest.fixture(scope="module")
def feedback():
    fb = FeedbackListener()
    yield fb
    fb.close()


@pytest.fixture(scope="module")
def daemon(tiny_model_dir, preset_dir, feedback):  # noqa: F811
    cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port, **{"tempo.bpm": 240.0, "presets.quantize": "bar"})
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
    d.start()
    assert wait_until(lambda: d.frames_rendered > 3, 20), "daemon renders no frames"
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(daemon):
    return SimpleUDPClient(*daemon.osc.address)


def test_beats_go_out_on_feedback(daemon, feedback):
    feedback.clear()
    assert wait_until(lambda: len(feedback.values("/sd/status/beat")) >= 4, 5)  # 240 bpm: 4 a second
    beats = feedback.values("/sd/status/beat")
    numbers = [b[0] for b in beats]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    for n, phase in beats:
        assert n % 4 <= phase < n % 4 + 0.5  # noticed within a few frames of the beat
    tempo = daemon.page_status()["tempo"]
    assert tempo["bpm"] == 240.0 and tempo["clock"] == "internal" and tempo["beats_per_bar"] == 4


def test_a_recall_waits_for_the_bar(daemon, client, feedback):
    name = daemon.presets.names()[0]
    client.send_message("/sd/preset", [name])  # presets.quantize: bar
    assert wait_until(lambda: daemon.controller.tempo_status()["waiting_recall"] == name, 2)
    assert wait_until(lambda: daemon.controller.current_preset == name, 3, step=0.002)
    phase = bar_phase(daemon.controller.tempo.beat_at(time.monotonic()), 4)
    assert phase < 1.0  # seen within the bar's first beat (the recall itself lands within a frame)
    assert daemon.controller.tempo_status()["waiting_recall"] == ""


def test_an_lfo_on_the_mix_reaches_the_render_loop_not_the_fader(daemon, client, feedback):
    feedback.clear()
    client.send_message("/sd/lfo/mix/shape", "square")
    client.send_message("/sd/lfo/mix/rate", 1.0)
    client.send_message("/sd/lfo/mix/depth", 0.4)
    feedback.wait_for("/sd/lfo/mix/depth", lambda a: a[0] == pytest.approx(0.4))
    seen: set[float] = set()

    def both() -> bool:
        seen.add(round(daemon.controller.effective["mix"], 6))
        return {0.6, 1.0} <= seen

    assert wait_until(both, 3, step=0.01)  # the mix the render loop reads moves with the beat
    assert daemon.controller.values["mix"] == 1.0 and feedback.values("/sd/mix") == []
    assert daemon.page_status()["modulated"]["mix"] in (0.6, 1.0)
    client.send_message("/sd/lfo/mix/enabled", 0)
    assert wait_until(lambda: daemon.controller.effective["mix"] == 1.0 and not daemon.controller.modulated)
