"""Tempo in the live controller, on a manual clock: quantised recalls land on the boundary within
one frame, beat-length transitions follow the tempo, LFOs modulate what the pipeline gets (never
the fader values), tap tempo, /sd/status/beat."""

from __future__ import annotations

import math

import pytest

from bridge.control.surface import RecallPreset, SavePreset, SetParams, StepPreset, TempoTap
from bridge.lfo import seed_for, wave
from bridge.tempo import InternalClock
from tests.tempo.rig import FPS, Rig

FRAME = 1.0 / FPS


def first_tick_where(rig: Rig, predicate, limit: float = 10.0) -> float:
    end = rig.now + limit
    while rig.now < end:
        rig.step()
        if predicate():
            return rig.now
    raise AssertionError("never happened")


@pytest.mark.parametrize("offset", [0.0, 0.011, 0.029])
def test_a_bar_quantised_recall_lands_on_the_bar_within_one_frame(tmp_path, offset):
    r = Rig(tmp_path)
    try:
        r.now = offset  # frames fall anywhere relative to the beat grid, which starts at 0
        r.run(0.3)
        assert r.pipe.guidance_scale == pytest.approx(1.2)
        r.ctl.submit([RecallPreset("cut", "bar")])  # 120 bpm, 4/4: the next bar starts at 2.0 s
        r.step()
        assert r.ctl.current_preset is None and r.ctl.tempo_status()["waiting_recall"] == "cut"
        landed = first_tick_where(r, lambda: r.pipe.guidance_scale == 3.0)
        assert 2.0 <= landed < 2.0 + FRAME  # the first frame at or after the boundary
        assert r.ticks[-2] < 2.0  # ...and not a frame earlier
        assert r.ctl.current_preset == "cut" and r.pipe.seed == 4 and r.ctl.values["guidance"] == 3.0
        assert r.echoed("guidance") == [3.0]
        r.check()
    finally:
        r.close()


def test_beat_quantise_from_the_config_and_now_per_call(tmp_path):
    r = Rig(tmp_path, quantize="beat", bpm=100.0)  # a beat every 0.6 s
    try:
        r.run(0.5)
        r.ctl.submit([RecallPreset("cut")])  # the configured default: next beat
        landed = first_tick_where(r, lambda: r.pipe.guidance_scale == 3.0)
        assert 0.6 <= landed < 0.6 + FRAME
        r.ctl.submit([RecallPreset("plain", "off")])  # `/sd/preset plain now`: this frame
        r.step()
        assert r.pipe.guidance_scale == 1.0 and r.ctl.current_preset == "plain"
        r.check()
    finally:
        r.close()


def test_the_latest_recall_wins_and_next_steps_from_the_waiting_one(rig):
    rig.run(0.1)
    rig.ctl.submit([RecallPreset("cut", "bar")])
    rig.step()
    rig.ctl.submit([RecallPreset("plain", "bar")])  # replaces the waiting recall
    rig.run_until(2.0)
    assert rig.ctl.current_preset == "plain"
    assert rig.echoed("guidance") == [1.0]  # "cut" never applied
    rig.ctl.submit([RecallPreset("cut", "bar")])
    rig.ctl.submit([StepPreset(1)])  # from the waiting "cut": the preset after it
    rig.step()
    assert rig.ctl._scheduled is None  # a plain recall (quantize off) replaced the waiting one
    names = rig.store.names()
    assert rig.ctl.current_preset == names[(names.index("cut") + 1) % len(names)]


def test_transition_beats_morph_from_the_boundary_at_the_current_tempo(rig):
    rig.ctl.submit([SetParams({"bpm": 60.0})])  # a beat a second, from t = 0
    rig.ctl.tick()
    rig.run(0.2)
    rig.ctl.submit([RecallPreset("morph", "beat")])  # transition_beats: 2 -> 2 s at 60 bpm
    rig.run_until(1.0 - FRAME / 2)
    assert rig.ctl._morph is None
    rig.step()  # t = 1.0: the boundary
    assert rig.ctl._morph is not None and rig.ctl._morph.t0 == pytest.approx(1.0)
    assert rig.ctl._morph.duration == pytest.approx(2.0)
    rig.run_until(2.0)
    assert rig.pipe.guidance_scale == pytest.approx(1.2 + (5.0 - 1.2) * 0.5)  # half-way, a beat later
    rig.run_until(3.0)
    assert rig.ctl._morph is None and rig.pipe.guidance_scale == 5.0
    rig.check()


def test_transition_seconds_beat_precedence(rig):
    ctl = rig.ctl
    ctl.values["bpm"] = 120.0
    assert ctl._transition_seconds({"transition_beats": 4.0}) == pytest.approx(2.0)
    assert ctl._transition_seconds({"transition": 0.5}) == 0.5
    ctl.values["transition_beats"] = 8.0
    assert ctl._transition_seconds({"transition": 0.5}) == 0.5  # the preset's own seconds win
    assert ctl._transition_seconds({}) == pytest.approx(4.0)  # the live default in beats
    ctl.values["transition_beats"] = 0.0
    ctl.values["transition"] = 1.5
    assert ctl._transition_seconds({}) == 1.5


def test_an_lfo_modulates_the_pipeline_not_the_fader(rig):
    rig.ctl.submit([SetParams({"guidance": 2.0, "lfo/guidance/shape": "sine", "lfo/guidance/rate": 4.0,
                               "lfo/guidance/depth": 0.5})])
    rig.step()
    echoes_before = len(rig.echoed("guidance"))
    for _ in range(90):
        rig.step()
        beat = rig.now * 2.0  # 120 bpm from t = 0
        want = 2.0 + 0.5 * math.sin(2 * math.pi * beat / 4.0)
        assert rig.pipe.guidance_scale == pytest.approx(want, abs=1e-9)
        assert rig.ctl.modulated["guidance"] == pytest.approx(want, abs=1e-9)
    assert rig.ctl.values["guidance"] == 2.0  # the fader value
    assert len(rig.echoed("guidance")) == echoes_before  # modulation is never echoed as the fader
    assert rig.echoed("lfo/guidance/depth") == [0.5]
    # the fader moves under the LFO: modulation rides on the new value
    rig.ctl.submit([SetParams({"guidance": 4.0})])
    rig.step()
    assert rig.pipe.guidance_scale == pytest.approx(4.0 + 0.5 * math.sin(2 * math.pi * rig.now * 2.0 / 4.0))
    rig.ctl.submit([SetParams({"lfo/guidance/enabled": False})])
    rig.step()
    assert rig.pipe.guidance_scale == 4.0 and "guidance" not in rig.ctl.modulated
    rig.check()


@pytest.mark.parametrize("shape", ["sine", "triangle", "saw", "square", "random"])
def test_every_shape_is_exact_on_the_pipeline_at_known_times(rig, shape):
    # free-running at 0.5 Hz, depth 0.4 of the guidance control range (0..5), phase 0.1
    fields = {"shape": shape, "sync": False, "rate": 0.5, "depth_norm": 0.4, "phase": 0.1}
    rig.ctl.submit([SetParams({"guidance": 2.5, **{f"lfo/guidance/{k}": v for k, v in fields.items()}})])
    rig.ctl.tick()  # at t = 0: the free-running wave starts there
    for _ in range(75):
        rig.step()
        x = rig.now * 0.5 + 0.1  # seconds since the controller started, at 0.5 Hz, plus the phase
        want = 2.5 + 2.0 * wave(shape, x, seed_for("guidance"))
        assert rig.ctl.modulated["guidance"] == pytest.approx(want, abs=1e-12)
        assert rig.pipe.guidance_scale == pytest.approx(want, abs=1e-12)
    assert rig.ctl.values["guidance"] == 2.5
    rig.check()


def test_modulation_is_clamped_to_the_hard_range(rig):
    rig.ctl.submit([SetParams({"mix": 0.9, "lfo/mix/shape": "square", "lfo/mix/depth": 0.5, "lfo/mix/rate": 1.0})])
    rig.step()  # beat 0.07 of a 1-beat cycle: square is +1
    assert rig.ctl.effective["mix"] == 1.0 and rig.ctl.values["mix"] == 0.9
    rig.run_until(0.3)  # beat 0.6: square is -1
    assert rig.ctl.effective["mix"] == pytest.approx(0.4)
    rig.check()


def test_lfos_on_the_crossfaders_reach_the_noise_and_the_conditioning(rig, monkeypatch):
    for text in ("a red apple", "a green pear"):
        rig.cache.request(text)
    assert rig.ctl.prewarm(["a red apple", "a green pear"]).wait(10)
    mixes: list[float] = []
    real = rig.pipe.set_conditioning

    def spy(a, b=None, mix=0.0, negative=None):
        mixes.append(mix)
        real(a, b, mix, negative)

    monkeypatch.setattr(rig.pipe, "set_conditioning", spy)
    rig.ctl.submit([SetParams({"prompt_a": "a red apple", "prompt_b": "a green pear", "prompt_mix": 0.5,
                               "seed_b": 9, "seed_mix": 0.5,
                               "lfo/prompt_mix/depth": 0.25, "lfo/seed_mix/depth": 0.25, "lfo/seed_mix/shape": "triangle"})])
    rig.run(0.5)
    beat = rig.now * 2.0
    assert mixes[-1] == pytest.approx(0.5 + 0.25 * math.sin(2 * math.pi * beat / 4))
    assert rig.pipe.seed_mix == pytest.approx(0.5 + 0.25 * wave("triangle", beat / 4))
    assert rig.ctl.values["prompt_mix"] == 0.5 and rig.ctl.values["seed_mix"] == 0.5
    rig.check()


def test_presets_set_replace_and_stop_lfos(rig):
    rig.ctl.submit([SetParams({"lfo/delta/depth": 0.3})])
    rig.step()
    rig.ctl.submit([RecallPreset("plain")])  # no lfos key: running LFOs stay
    rig.step()
    assert set(rig.ctl.lfos) == {"delta"}
    rig.ctl.submit([RecallPreset("wobble")])
    rig.step()
    assert set(rig.ctl.lfos) == {"guidance", "strength"}  # replaced: delta stopped
    g, s = rig.ctl.lfos["guidance"], rig.ctl.lfos["strength"]
    assert (g.shape, g.rate, g.sync, g.depth, g.norm) == ("square", 1.0, True, 0.5, False)
    assert (s.shape, s.rate, s.sync, s.depth, s.norm, s.phase) == ("saw", 2.0, False, 0.25, True, 0.5)
    assert rig.echoed("lfo/delta/enabled") == [False] and rig.echoed("lfo/strength/depth_norm") == [0.25]
    assert rig.pipe.delta == rig.ctl.values["delta"]  # delta is back on its fader value
    rig.run(0.2)
    assert rig.ctl.modulated["guidance"] in (1.5, 2.5)
    rig.ctl.submit([RecallPreset("still")])  # lfos: {} stops them all
    rig.step()
    assert rig.ctl.lfos == {} and rig.ctl.modulated == {} and rig.pipe.guidance_scale == 1.5
    rig.check()


def test_a_saved_preset_keeps_its_lfos(rig):
    rig.ctl.submit([SetParams({"lfo/smoothing/shape": "random", "lfo/smoothing/depth_norm": 0.2,
                               "lfo/smoothing/rate": 8.0})])
    rig.ctl.submit([SavePreset("mine")])
    rig.step()
    rig.ctl.saver.close()
    text = (rig.folder / "mine.yaml").read_text()
    assert "lfos:" in text and "random" in text
    rig.store.reload()
    saved = rig.store.get("mine")
    assert saved.lfos["smoothing"].to_lfo("smoothing") == rig.ctl.lfos["smoothing"]


def test_tap_tempo_sets_the_tempo_and_puts_the_beat_on_the_taps(rig):
    rig.run(0.25)
    for i in range(4):  # stamped on receipt, not at the next frame
        rig.now = round(1.0 + 0.4 * i, 9)
        rig.ctl.submit([TempoTap()])
    rig.now = 2.21
    rig.ctl.tick()
    assert rig.ctl.values["bpm"] == 150.0 and rig.ctl.tempo.bpm == 150.0
    assert rig.echoed("bpm") == [150.0]
    last_tap_beat = rig.ctl.tempo.beat_at(2.2)
    assert last_tap_beat == pytest.approx(round(last_tap_beat), abs=1e-9)  # the last tap is a beat


def test_tempo_changes_keep_the_beat_continuous(rig):
    rig.run_until(1.0)
    before = rig.ctl.tempo.beat_at(rig.now)
    rig.ctl.submit([SetParams({"bpm": 90.0})])
    rig.step()
    assert rig.ctl.tempo.bpm == 90.0
    assert rig.ctl.tempo.beat_at(rig.now) == pytest.approx(before + 1.5 * FRAME, abs=0.06)
    rig.run_until(2.0)
    assert rig.ctl.tempo.beat_at(2.0) - rig.ctl.tempo.beat_at(1.0 + FRAME) == pytest.approx(1.5 * (1 - FRAME))


def test_beat_status_once_per_beat(rig):
    rig.run_until(4.0)  # 8 beats at 120 bpm
    beats = [v for k, v in rig.statuses if k == "beat"]
    assert [n for n, _ in beats] == list(range(1, 9))
    for n, phase in beats:
        assert phase == pytest.approx(n % 4, abs=2 * FRAME * 2.0)  # sent in the frame the beat fell in
        assert phase >= n % 4


def test_bad_control_changes_nothing(rig):
    lfos = dict(rig.ctl.lfos)
    rig.ctl.submit([RecallPreset("missing", "bar")])
    rig.step()
    assert rig.errors and "no preset 'missing'" in rig.errors[0][1]
    assert rig.ctl._scheduled is None and rig.ctl.lfos == lfos


class SessionClock(InternalClock):
    """Stands in for Link: another peer changes the tempo; the phase is never ours to move."""

    kind = "link"

    def align(self, now: float, beat: float) -> None:
        self.aligned = True


def test_an_external_tempo_is_followed_and_echoed(tmp_path):
    session = SessionClock(120.0, 4, clock=lambda: 0.0)
    r = Rig(tmp_path, tempo=session)
    try:
        r.run(0.1)
        session.set_bpm(128.004, r.now)  # a peer changed the session's tempo
        r.step()
        assert r.ctl.values["bpm"] == 128.0 and r.echoed("bpm") == [128.0]
        session.set_bpm(128.002, r.now)  # jitter under a hundredth: not echoed again
        r.run(0.1)
        assert r.echoed("bpm") == [128.0]
        assert r.ctl.tempo_status()["clock"] == "link"
        r.check()
    finally:
        r.close()


def test_an_lfo_rides_on_a_running_morph(rig):
    rig.ctl.submit([SetParams({"lfo/guidance/shape": "square", "lfo/guidance/rate": 1.0, "lfo/guidance/depth": 0.5})])
    rig.ctl.submit([RecallPreset("morph")])  # guidance 1.2 -> 5.0 over 2 beats (1 s at 120 bpm)
    rig.step()
    t0 = rig.ctl._morph.t0
    for _ in range(20):
        rig.step()
        u = min(1.0, (rig.now - t0) / 1.0)
        base = 1.2 + (5.0 - 1.2) * u
        sign = 1.0 if (rig.now * 2.0) % 1.0 < 0.5 else -1.0
        assert rig.pipe.guidance_scale == pytest.approx(base + 0.5 * sign, abs=1e-9)
    assert rig.ctl.values["guidance"] == 1.2  # the fader moves when the morph ends, never with the LFO
    rig.run(1.0)
    assert rig.ctl.values["guidance"] == 5.0 and rig.pipe.guidance_scale in (4.5, 5.5)
    rig.check()


def test_a_failing_lfo_is_removed_with_one_report(rig, monkeypatch):
    rig.ctl.submit([SetParams({"lfo/delta/depth": 0.1, "delta": 0.9})])
    rig.step()
    assert "delta" in rig.ctl.modulated

    def broken(value):
        raise RuntimeError("delta refused")

    monkeypatch.setattr(rig.pipe, "set_delta", broken)
    rig.run(0.5)  # 15 ticks: one report, not one per frame
    assert len(rig.errors) == 1 and rig.errors[0][0] == "/sd/lfo/delta"
    assert "delta refused" in rig.errors[0][1]
    assert rig.ctl.lfos == {} and rig.ctl.modulated == {} and rig.ctl.values["delta"] == 0.9


def test_a_free_running_rate_change_continues_the_wave(rig):
    rig.ctl.submit([SetParams({"guidance": 2.0, "lfo/guidance/sync": False, "lfo/guidance/rate": 1.0,
                               "lfo/guidance/depth": 1.0, "lfo/guidance/shape": "saw"})])
    rig.run(3.3)  # many cycles in: a rate change re-computed from t = 0 would land anywhere
    before = rig.pipe.guidance_scale
    rig.ctl.submit([SetParams({"lfo/guidance/rate": 1.1})])
    rig.step()
    assert abs(rig.pipe.guidance_scale - before) < 2 * 1.1 * 2 / 30  # one frame's worth of slope, no jump
    rig.check()


def test_downbeat_moves_the_bar_line_to_the_press(rig):
    rig.run_until(1.25)  # about beat 2.5: the third beat of the first bar, says the clock
    press = rig.now
    rig.ctl.submit([TempoTap(downbeat=True)])  # ...but the music's bar starts now
    rig.ctl.tick()
    assert rig.ctl.tempo.beat_at(press) == pytest.approx(4.0)  # the nearest bar line, moved here
    rig.ctl.submit([RecallPreset("cut", "bar")])
    landed = first_tick_where(rig, lambda: rig.pipe.guidance_scale == 3.0)
    assert press + 2.0 - 1e-9 <= landed < press + 2.0 + FRAME  # the next bar: 4 beats after the press
    rig.check()


def test_downbeat_is_refused_with_link(tmp_path):
    r = Rig(tmp_path, tempo=SessionClock(120.0, 4, clock=lambda: 0.0))
    try:
        r.run(0.5)
        r.ctl.submit([TempoTap(downbeat=True)])
        r.step()
        assert r.errors == [("/sd/tempo/downbeat", r.errors[0][1])] and "session" in r.errors[0][1]
        assert r.ctl.tempo.beat_at(r.now) == pytest.approx(r.now * 2.0)
    finally:
        r.close()
