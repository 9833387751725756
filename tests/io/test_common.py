"""Shared helpers: frame pacing, sink input checks, natural sort, lazy optional imports."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bridge.io._common import FrameClock, as_rgb, import_optional, natural_key
from bridge.io.base import BackendUnavailable, FrameError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt


def test_frame_clock_schedule_and_timeout() -> None:
    c = FakeClock()
    fc = FrameClock(10.0, c, c.sleep)
    assert fc.wait(0.0)  # the first frame is due at once
    assert not fc.wait(0.05)  # next is due at 0.1
    assert c.now == pytest.approx(0.05)
    assert fc.wait(0.5)
    assert c.now == pytest.approx(0.1)


def test_frame_clock_never_bursts_after_a_late_reader() -> None:
    c = FakeClock()
    fc = FrameClock(10.0, c, c.sleep)
    assert fc.wait(1.0)
    c.now += 1.0  # the consumer was busy for ten periods
    assert fc.wait(0.0)  # one frame at once...
    assert not fc.wait(0.0)  # ...but no catch-up burst
    assert fc.wait(1.0)
    assert c.now == pytest.approx(1.1)


def test_frame_clock_keeps_phase_through_small_jitter() -> None:
    c = FakeClock()
    fc = FrameClock(10.0, c, c.sleep)
    fc.wait(1.0)
    c.now += 0.13  # read 30 ms late
    assert fc.wait(1.0)
    assert fc.wait(1.0)
    assert c.now == pytest.approx(0.2)  # back on the 100 ms grid


def test_frame_clock_rejects_bad_fps() -> None:
    with pytest.raises(ValueError):
        FrameClock(0.0)


def test_as_rgb_accepts_and_rejects() -> None:
    good = np.zeros((4, 6, 3), np.uint8)
    assert as_rgb(good) is good
    fortran = np.asfortranarray(np.zeros((4, 6, 3), np.uint8))
    assert as_rgb(fortran).flags.c_contiguous
    for bad in (
        np.zeros((4, 6, 3), np.float32),
        np.zeros((4, 6, 4), np.uint8),
        np.zeros((4, 6), np.uint8),
        np.zeros((0, 6, 3), np.uint8),
        [[1, 2, 3]],
    ):
        with pytest.raises(FrameError):
            as_rgb(bad)


def test_natural_sort() -> None:
    names = ["f10.png", "f2.png", "F1.png", "f1b.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "F1.png", "f1b.png", "f2.png", "f10.png"]


def test_import_optional_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "somelib_xyz", None)
    with pytest.raises(BackendUnavailable, match=r'pip install "streambridge\[thing\]"'):
        import_optional("somelib_xyz", kind="Thing", extra="thing")
    other = "win32" if sys.platform != "win32" else "darwin"
    with pytest.raises(BackendUnavailable, match="-only and this is"):
        import_optional("somelib_xyz", kind="Thing", extra="thing", platform=other)
