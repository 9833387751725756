"""The built-in test pattern: content, counter, pacing and cost."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.io.base import PixelFormat
from bridge.io.pattern import PatternSource, PatternSourceConfig
from bridge.runtime.convert import validate_frame as check_frame


class FakeClock:
    """Monotonic time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.now += dt


def test_frames_have_the_configured_size_and_format() -> None:
    src = PatternSource(PatternSourceConfig(width=320, height=180, fps=240))
    src.open()
    frame = src.read(1.0)
    assert frame is not None
    assert frame.fmt is PixelFormat.RGB
    assert frame.data.shape == (180, 320, 3) and frame.data.dtype == np.uint8
    assert frame.data.flags.c_contiguous
    check_frame(frame)
    assert src.nominal_fps == 240
    src.close()


@pytest.mark.parametrize("size", [(16, 16), (17, 31), (4000, 64)])
def test_odd_and_extreme_sizes_render(size: tuple[int, int]) -> None:
    w, h = size
    src = PatternSource(PatternSourceConfig(width=w, height=h))
    src.open()
    assert src.render(123).shape == (h, w, 3)


def test_counter_advances_and_is_drawn() -> None:
    clock = FakeClock()
    src = PatternSource(
        PatternSourceConfig(width=256, height=256, fps=30), clock=clock, sleep=clock.sleep
    )
    src.open()
    frames = [src.read(1.0) for _ in range(4)]
    assert [f.seq for f in frames if f is not None] == [0, 1, 2, 3]
    # the counter text changes the top-left strip between consecutive frames
    a = src.render(41, wall_time=0.0)
    b = src.render(42, wall_time=0.0)
    strip = (slice(0, 20), slice(0, 120))
    assert np.any(a[strip] != b[strip])
    # ...and rendering is deterministic for the same frame number and time
    np.testing.assert_array_equal(src.render(42, wall_time=0.0), b)


def test_picture_moves_smoothly() -> None:
    src = PatternSource(PatternSourceConfig(width=256, height=256, fps=30, overlay=False))
    src.open()
    f0, f1, f60 = src.render(0), src.render(1), src.render(60)
    step = np.abs(f1.astype(int) - f0).mean()
    far = np.abs(f60.astype(int) - f0).mean()
    assert 0 < step < far, (step, far)  # consecutive frames differ a little, distant ones a lot
    assert len(np.unique(f0.reshape(-1, 3), axis=0)) > 1000  # colourful, not a flat field


def test_paced_by_fps_through_read_timeout() -> None:
    clock = FakeClock()
    src = PatternSource(PatternSourceConfig(fps=25), clock=clock, sleep=clock.sleep)
    src.open()
    times = []
    for _ in range(5):
        frame = src.read(1.0)
        assert frame is not None
        times.append(frame.t_capture)
    assert np.allclose(np.diff(times), 0.04)
    # not due within the timeout: read waits the timeout and returns None
    t = clock.now
    assert src.read(0.01) is None
    assert clock.now - t == pytest.approx(0.01)
    assert src.read(1.0) is not None
    assert clock.now - times[-1] == pytest.approx(0.04)


def test_real_time_pacing_is_roughly_right() -> None:
    src = PatternSource(PatternSourceConfig(width=64, height=64, fps=50))
    src.open()
    t0 = time.monotonic()
    got = 0
    while got < 11:
        if src.read(1.0) is not None:
            got += 1
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed <= 2.0, elapsed  # 10 periods of 20 ms, generous upper bound


def test_generation_is_cheap() -> None:
    src = PatternSource(PatternSourceConfig(width=512, height=512))
    src.open()
    medians = []
    for batch in range(3):
        times = []
        for i in range(60):
            t = time.perf_counter()
            src.render(batch * 60 + i)
            times.append(time.perf_counter() - t)
        medians.append(float(np.median(times)))
    # typically ~0.2 ms on a laptop core; best-of-3 medians keeps a busy CI machine from flaking
    assert min(medians) < 1e-3, medians


def test_read_before_open_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before open"):
        PatternSource().read(0.1)
