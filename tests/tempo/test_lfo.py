"""LFO waves and settings: exact values at known times for every shape."""

from __future__ import annotations

import math

import pytest

from bridge.lfo import SHAPES, Lfo, check_field, seed_for, wave

# (shape, cycle position, value): quarter points of one cycle, and the same a cycle later
KNOWN = [
    ("sine", 0.0, 0.0), ("sine", 0.25, 1.0), ("sine", 0.5, 0.0), ("sine", 0.75, -1.0), ("sine", 1.125, math.sqrt(0.5)),
    ("triangle", 0.0, 0.0), ("triangle", 0.125, 0.5), ("triangle", 0.25, 1.0), ("triangle", 0.5, 0.0),
    ("triangle", 0.75, -1.0), ("triangle", 0.875, -0.5), ("triangle", 2.25, 1.0),
    ("saw", 0.0, -1.0), ("saw", 0.25, -0.5), ("saw", 0.5, 0.0), ("saw", 0.75, 0.5), ("saw", 3.5, 0.0),
    ("square", 0.0, 1.0), ("square", 0.49, 1.0), ("square", 0.5, -1.0), ("square", 0.99, -1.0), ("square", 1.0, 1.0),
]


@pytest.mark.parametrize(("shape", "x", "want"), KNOWN)
def test_wave_values_at_known_positions(shape: str, x: float, want: float) -> None:
    assert wave(shape, x) == pytest.approx(want, abs=1e-12)


def test_random_is_smooth_repeatable_and_bounded() -> None:
    seed = seed_for("guidance")
    points = [wave("random", k, seed) for k in range(64)]
    assert len({round(p, 9) for p in points}) == 64  # a new target every cycle
    assert all(-1.0 <= p <= 1.0 for p in points)
    assert points == [wave("random", k, seed) for k in range(64)]  # same seed, same wobble
    assert points != [wave("random", k, seed_for("strength")) for k in range(64)]
    for k in range(8):
        a, b = points[k], points[k + 1]
        # cosine easing: exactly the midpoint half-way, at the targets on whole cycles, flat at the ends
        assert wave("random", k + 0.5, seed) == pytest.approx((a + b) / 2, abs=1e-12)
        assert wave("random", k + 1e-9, seed) == pytest.approx(a, abs=1e-9)
        assert wave("random", k + 0.25, seed) == pytest.approx(a + (b - a) * (1 - math.cos(math.pi / 4)) / 2)
    xs = [i / 1000 for i in range(8000)]
    steps = [abs(wave("random", x1, seed) - wave("random", x0, seed)) for x0, x1 in zip(xs, xs[1:], strict=False)]
    assert max(steps) < 2 * math.pi / 1000  # no jump anywhere


def test_every_shape_spans_minus_one_to_one() -> None:
    for shape in SHAPES:
        values = [wave(shape, i / 400, 7) for i in range(4000)]
        assert min(values) >= -1.0 and max(values) <= 1.0
        if shape != "random":
            assert min(values) == pytest.approx(-1.0, abs=0.02) and max(values) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="unknown LFO shape"):
        wave("wobble", 0.0)


def test_synced_rate_is_beats_per_cycle_and_free_rate_is_hz() -> None:
    synced = Lfo(shape="saw", rate=4.0, sync=True, depth=1.0)
    assert synced.offset(seconds=123.0, beats=2.0, control_range=(0, 1)) == pytest.approx(0.0)  # half a bar
    assert synced.offset(seconds=0.0, beats=5.0, control_range=(0, 1)) == pytest.approx(-0.5)
    free = Lfo(shape="sine", rate=2.0, sync=False, depth=0.5)
    assert free.offset(seconds=0.125, beats=99.0, control_range=(0, 1)) == pytest.approx(0.5)  # 1/4 cycle at 2 Hz
    shifted = Lfo(shape="sine", rate=2.0, sync=False, depth=0.5, phase=0.25)
    assert shifted.offset(seconds=0.0, beats=0.0, control_range=(0, 1)) == pytest.approx(0.5)


def test_depth_in_units_or_normalised_over_the_control_range() -> None:
    lfo = Lfo(shape="square", depth=0.5)
    assert lfo.offset(0, 0, (0.0, 5.0)) == 0.5
    norm = lfo.with_field("depth_norm", 0.5)
    assert norm.norm and norm.offset(0, 0, (0.0, 5.0)) == 2.5
    assert norm.offset(0, 0, (2.0, 0.0)) == 1.0  # an inverted control range still spans 2
    assert norm.with_field("depth", 0.1).norm is False
    assert norm.fields() == {"shape": "square", "rate": 4.0, "sync": True, "depth_norm": 0.5, "phase": 0.0,
                             "enabled": True}
    assert not Lfo(depth=0.0).active and not Lfo(depth=1.0, enabled=False).active and Lfo(depth=1.0).active


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("shape", "wobble", "one of sine, triangle, saw, square, random"),
    ("rate", 0, "outside"), ("rate", 5000, "outside"), ("rate", math.inf, "finite"), ("rate", "1", "a number"),
    ("depth", -1, "outside"), ("depth_norm", 1.01, "outside"), ("phase", 1.5, "outside"), ("phase", True, "a number"),
    ("sync", 2, "0/1"), ("enabled", "yes", "0/1"),
])
def test_bad_fields_are_refused_with_a_reason(field: str, value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_field(field, value)


def test_good_fields_are_coerced() -> None:
    assert check_field("rate", 4) == 4.0 and isinstance(check_field("rate", 4), float)
    assert check_field("sync", 0) is False and check_field("enabled", 1.0) is True
    assert check_field("shape", "random") == "random"


def test_a_free_running_lfo_continues_from_where_it_was() -> None:
    before = Lfo(shape="saw", rate=1.0, sync=False, depth=1.0, phase=0.25)
    after = Lfo(shape="saw", rate=3.0, sync=False, depth=1.0, phase=0.25).continued_from(before, 10.4, 0.0)
    assert after.cycles(10.4, 0.0) == pytest.approx(before.cycles(10.4, 0.0))
    assert after.cycles(10.5, 0.0) - after.cycles(10.4, 0.0) == pytest.approx(0.3)  # then at the new rate
    synced = Lfo(rate=4.0)
    assert synced.cycles(99.0, 6.0) == 1.5  # synced: the beat grid, wherever the anchor is
