"""The publisher's phase lock, simulated on a manual clock (deterministic, no real time).

A source delivers frames at a given rate with jitter; the publisher ticks at its own rate on the
same clock. We count, after a settling second, the frames that never reached the output (drops)
and the ticks that sent the previous frame again while frames were flowing (repeats).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import PHASE_MAX_STEP, Publisher
from tests.runtime.conftest import FakeClock, RecordingSink


class JitterySource:
    """Frames at ``fps`` arriving in bursts of ``burst`` (a stream call with frame buffer
    ``burst``) every ``burst/fps`` s (+ ``phase``), each burst with uniform jitter of +-``jitter`` s.

    ``take``/``last_taken`` behave like ``LatestMailbox(capacity=burst)``'s ``get(0)`` and
    ``last_taken`` (oldest first, the oldest dropped when more than ``burst`` wait).
    """

    def __init__(self, clock: FakeClock, fps: float, *, phase: float = 0.0, jitter: float = 0.0,
                 seconds: float = 10.0, seed: int = 1, burst: int = 1) -> None:
        rng = random.Random(seed)
        n = (int(seconds * fps) // burst + 2) * burst
        starts = [clock.now + phase + b * burst / fps + rng.uniform(-jitter, jitter) for b in range(n // burst)]
        starts.sort()
        self.times = [starts[k // burst] for k in range(n)]
        self.arrays = [np.full((4, 4, 3), k % 256, np.uint8) for k in range(n)]
        self.clock = clock
        self.burst = burst
        self.next = 0  # first frame not yet taken or dropped
        self.taken: tuple[int, float] | None = None

    def take(self) -> FramePacket | None:
        now = self.clock.now
        arrived = self.next
        while arrived < len(self.times) and self.times[arrived] <= now:
            arrived += 1
        self.next = max(self.next, arrived - self.burst)  # the mailbox holds at most `burst`
        if self.next >= arrived:
            return None
        k = self.next
        self.next += 1
        self.taken = (k + 1, self.times[k])
        return FramePacket(self.arrays[k], self.times[k], k)

    def last_taken(self) -> tuple[int, float] | None:
        return self.taken


def simulate(src_fps: float, out_fps: float, *, lock: bool = True, jitter: float = 0.001, phase: float = 0.0,
             seconds: float = 10.0, seed: int = 1, burst: int = 1):
    clock = FakeClock(start=100.0)
    source = JitterySource(clock, src_fps, phase=phase, jitter=jitter, seconds=seconds + 1, seed=seed, burst=burst)
    sink = RecordingSink(clock=clock)
    end = clock.now + seconds

    def sleep(dt: float) -> None:
        clock.sleep(dt)
        if clock.now >= end:
            pub.stop()

    pub = Publisher([sink], out_fps, source.take, Metrics(), "hold", clock=clock, sleep=sleep,
                    default_size=(8, 8), arrivals=source.last_taken, phase_lock=lock, threaded_sinks=False)
    pub._run()  # the publisher thread's loop, on this thread, on the manual clock
    seq_of = {id(a): k for k, a in enumerate(source.arrays)}
    sent = [(t, seq_of.get(id(f))) for t, f in zip(sink.times, sink.frames, strict=True)]
    return sent, source, pub


def judder(sent, start: float):
    """(drops, repeats) among the ticks after ``start`` (seconds from the first tick)."""
    t0 = sent[0][0]
    seqs = [s for t, s in sent if t - t0 >= start and s is not None]
    drops = sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b > a)
    repeats = sum(1 for a, b in itertools.pairwise(seqs) if a == b)
    return drops, repeats


def test_equal_rates_in_phase_judder_without_the_lock_and_not_with_it():
    # worst case: arrivals sit on the tick grid, so +-1 ms of jitter decides every tick
    sent, _, _ = simulate(60, 60, lock=False)
    drops, repeats = judder(sent, 1.0)
    assert drops > 50 and repeats > 50  # the problem is real in this scenario
    sent, _, pub = simulate(60, 60, lock=True)
    assert judder(sent, 1.0) == (0, 0)
    assert pub.phase_offset == pytest.approx(1 / 120, abs=0.002)  # ticks settled half a period after frames
    assert pub.frame_interval == pytest.approx(1 / 60, rel=0.02)


@pytest.mark.parametrize("phase", [0.0, 0.004, 0.012, 1 / 60 - 0.0005])
def test_lock_holds_from_any_starting_phase(phase):
    sent, _, _ = simulate(60, 60, phase=phase, seed=3)
    assert judder(sent, 1.0) == (0, 0)


def test_ntsc_source_into_a_60_hz_output_only_repeats_what_it_must():
    # 59.94 fps into 60 Hz: the arrivals slide across the tick grid, reaching it after ~5 s
    # (0.017 ms a frame). Unlocked, the +-1 ms jitter then judders for ~2 s; locked, the only
    # repeat is the one the rates force (one frame too few every 16.7 s) and nothing is dropped.
    src = 60000 / 1001
    phase = 1 / 60 - 300 * (1 / src - 1 / 60)
    sent, _, _ = simulate(src, 60, lock=False, phase=phase, seconds=12)
    drops, repeats = judder(sent, 1.0)
    assert drops > 10 and repeats > 10
    sent, _, _ = simulate(src, 60, phase=phase, seconds=12)
    drops, repeats = judder(sent, 1.0)
    assert drops == 0 and repeats <= 1


def test_half_rate_source_shows_every_frame_for_two_ticks():
    sent, _, _ = simulate(30, 60, jitter=0.002)
    t0 = sent[0][0]
    seqs = [s for t, s in sent if t - t0 >= 1.0]
    runs = [len(list(g)) for _, g in itertools.groupby(seqs)][1:-1]
    assert set(runs) == {2}


@pytest.mark.parametrize("burst", [2, 4])
def test_frame_buffer_bursts_go_out_one_frame_per_tick(burst):
    # a stream call with frame buffer f hands over f frames at once, f/60 s apart: locked to
    # the bursts' arrivals, every frame gets exactly one 60 Hz tick
    unlocked, _, _ = simulate(60, 60, burst=burst, lock=False)
    assert sum(judder(unlocked, 1.0)) > 20
    sent, _, pub = simulate(60, 60, burst=burst)
    assert judder(sent, 1.0) == (0, 0)
    assert pub.frame_interval == pytest.approx(1 / 60, rel=0.02)


def test_a_faster_source_never_speeds_the_output_up():
    # 60 fps into 30 Hz: every tick has a new frame; the grid must stay exactly where it was
    sent, _, pub = simulate(60, 30)
    times = [t for t, _ in sent]
    t0 = times[0]
    assert all(abs((t - t0) - k / 30) < 1e-6 for k, t in enumerate(times))
    assert pub.frame_interval == pytest.approx(1 / 60, rel=0.05)


def test_nudges_change_the_output_rate_by_at_most_the_step():
    sent, _, _ = simulate(57, 60, jitter=0.003)  # 5 % slower: cannot lock, keeps correcting
    times = [t for t, _ in sent]
    gaps = np.diff(times)
    period = 1 / 60
    assert gaps.min() >= period * (1 - PHASE_MAX_STEP) - 1e-4  # the manual clock sleeps >= 0.1 ms
    assert gaps.max() <= period * (1 + PHASE_MAX_STEP) + 1e-4
    assert len(times) == pytest.approx(600, abs=12)  # the output keeps (almost) its own rate


def test_without_arrival_times_the_grid_is_untouched():
    clock = FakeClock()
    pub = Publisher([RecordingSink()], 60, lambda: None, Metrics(), clock=clock, default_size=(8, 8),
                    threaded_sinks=False)
    assert pub.phase_step(clock.now, 1 / 60) == 0.0
