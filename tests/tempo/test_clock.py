"""The internal beat clock and tap tempo, on a manual clock."""

from __future__ import annotations

import pytest

from bridge.tempo import InternalClock, TapTempo, bar_phase, check_bpm, next_boundary


class Manual:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_beats_advance_at_the_tempo_and_stay_continuous_across_a_change() -> None:
    m = Manual()
    clock = InternalClock(120.0, 4, clock=m)
    assert clock.beat_at(100.0) == 0.0
    assert clock.beat_at(101.0) == pytest.approx(2.0)  # 120 bpm: 2 beats a second
    clock.set_bpm(60.0, 101.0)
    assert clock.beat_at(101.0) == pytest.approx(2.0)  # no jump at the change
    assert clock.beat_at(103.0) == pytest.approx(4.0)  # then one beat a second
    clock.align(103.0, 8.0)
    assert clock.beat_at(104.0) == pytest.approx(9.0) and clock.bpm == 60.0


def test_boundaries_and_bar_phase() -> None:
    assert next_boundary(4.2, 4) == 8.0
    assert next_boundary(4.0, 4) == 4.0  # on the boundary: that one
    assert next_boundary(3.9999999999, 4) == 4.0
    assert next_boundary(0.3, 1) == 1.0 and next_boundary(-0.5, 4) == 0.0
    assert bar_phase(9.5, 4) == 1.5 and bar_phase(9.5, 3) == 0.5 and bar_phase(-1.0, 4) == 3.0


def test_tempo_range() -> None:
    assert check_bpm(20) == 20.0
    for bad in (19.9, 1000, float("nan"), True, "120"):
        with pytest.raises(ValueError):
            check_bpm(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        InternalClock(120.0, 0)


def test_tap_tempo_averages_recent_taps() -> None:
    tap = TapTempo(max_taps=4)
    assert tap.tap(10.0) is None  # one tap: no tempo yet
    assert tap.tap(10.5) == pytest.approx(120.0)
    assert tap.tap(11.0) == pytest.approx(120.0)
    assert tap.tap(11.6) == pytest.approx(60 / (1.6 / 3))  # the average interval, not the last one
    assert tap.tap(12.2) == pytest.approx(60 / (1.7 / 3))  # only the last 4 taps count
    assert tap.count == 4


def test_tap_tempo_resets_after_a_pause_and_ignores_a_bounce() -> None:
    tap = TapTempo(reset_after=2.0)
    tap.tap(0.0)
    tap.tap(0.5)
    assert tap.tap(3.0) is None and tap.count == 1  # 2.5 s pause: a new count starts here
    assert tap.tap(3.4) == pytest.approx(150.0)
    assert tap.tap(3.41) is None and tap.count == 2  # a bounce 10 ms later is not a tap
    assert tap.tap(3.8) == pytest.approx(150.0)
    assert tap.tap(3.0) is None and tap.count == 1  # time went backwards: start again
