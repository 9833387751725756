"""The publisher's render watchdog, bypass from the source side and the stall fallbacks, on a
manual clock: the render thread is simulated by what it puts (or does not put) in the output box."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher

from .conftest import FakeClock, RecordingSink

TICK = 1 / 60


def _packet(value: int) -> FramePacket:
    return FramePacket(np.full((48, 64, 3), value, np.uint8), 0.0, value)


class Rig:
    def __init__(self, clock: FakeClock, **kwargs: object) -> None:
        self.clock = clock
        self.out: LatestMailbox[FramePacket] = LatestMailbox(4)
        self.inp: LatestMailbox[FramePacket] = LatestMailbox(1)
        self.state = "live"
        self.bypass = False
        self.changes: list[tuple[str, str]] = []
        self.sink = RecordingSink()
        self.metrics = Metrics(clock=clock)
        kwargs.setdefault("watchdog_s", 0.5)
        self.pub = Publisher(
            [self.sink], 60.0, self.out.take_latest, self.metrics,
            source_state=lambda: self.state, clock=clock, sleep=clock.sleep,
            get_input=self.inp.take_latest, bypass=lambda: self.bypass,
            on_render_state=lambda s, d: self.changes.append((s, d)),
            threaded_sinks=False, **kwargs,  # type: ignore[arg-type]
        )

    def tick(self, n: int = 1, input_value: int | None = None) -> np.ndarray:
        frame = None
        for _ in range(n):
            if input_value is not None:
                self.inp.put(_packet(input_value))
            frame = self.pub.publish_once()
            self.clock.advance(TICK)
        assert frame is not None
        return frame


def _value(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0])


def test_stall_shows_input_then_processed_frames_again(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.out.put(_packet(200))
    assert _value(rig.tick(input_value=7)) == 200 and rig.pub.render_state == "ok"
    rig.tick(25, input_value=7)  # ~0.42 s without a processed frame: still ok, the last repeats
    assert rig.pub.render_state == "ok" and _value(rig.sink.frames[-1]) == 200
    rig.tick(10, input_value=9)  # past 0.5 s: stalled, the newest input goes out
    assert rig.pub.render_state == "stalled" and rig.pub.showing == "input"
    assert _value(rig.sink.frames[-1]) == 9
    assert rig.metrics.state("render") == "stalled"
    assert [s for s, _ in rig.changes] == ["stalled"]
    rig.tick(60)  # keeps publishing every tick while stalled
    assert len(rig.sink.frames) == 96
    rig.out.put(_packet(201))
    assert _value(rig.tick()) == 201 and rig.pub.render_state == "ok"
    assert rig.pub.showing == "frame"
    assert [s for s, _ in rig.changes] == ["stalled", "ok"]
    assert rig.metrics.counter("published_input") > 60


@pytest.mark.parametrize("mode", ["black", "slate", "hold"])
def test_stall_modes(clock: FakeClock, mode: str) -> None:
    rig = Rig(clock, on_stall=mode)
    rig.out.put(_packet(200))
    rig.tick(40, input_value=9)
    assert rig.pub.render_state == "stalled"
    last = rig.sink.frames[-1]
    if mode == "black":
        assert not last.any() and rig.pub.showing == "black"
    elif mode == "slate":
        assert rig.pub.showing == "slate" and len(np.unique(last.reshape(-1, 3), axis=0)) > 2
    else:
        assert _value(last) == 200 and rig.pub.showing == "frame"
    assert last.shape == (48, 64, 3)


def test_progress_notes_keep_the_render_ok(clock: FakeClock) -> None:
    """A static scene: the similarity filter skips calls (no new frame) but the render is alive."""
    rig = Rig(clock)
    rig.out.put(_packet(200))
    for _ in range(120):
        rig.pub.note_render_progress()
        rig.tick(input_value=9)
    assert rig.pub.render_state == "ok" and rig.changes == []


def test_no_render_stall_while_the_source_is_not_live(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.out.put(_packet(200))
    rig.tick()
    rig.state = "stalled"  # the input stopped: no processed frames is expected
    rig.tick(120)
    assert rig.pub.render_state == "ok"
    rig.state = "live"  # back: the render gets a full grace period from now
    rig.tick(25, input_value=3)
    assert rig.pub.render_state == "ok"
    rig.tick(10, input_value=3)
    assert rig.pub.render_state == "stalled"


def test_bypass_works_while_the_render_is_hung(clock: FakeClock) -> None:
    """Nothing ever comes out of the render (hung from the start): bypass still shows the input,
    every tick, with the newest input frame."""
    rig = Rig(clock, on_stall="black")
    rig.bypass = True
    for v in range(1, 100):
        assert _value(rig.tick(input_value=v)) == v
    assert rig.pub.showing == "input" and rig.pub.render_state == "ok"  # not judged in bypass
    rig.bypass = False  # bypass ends, the render still hung: input until it stalls, then black
    assert _value(rig.tick(input_value=5)) == 5
    rig.tick(40)
    assert rig.pub.render_state == "stalled" and not rig.sink.frames[-1].any()


def test_after_bypass_the_input_stays_until_a_new_processed_frame(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.out.put(_packet(200))
    rig.tick(input_value=1)
    rig.bypass = True
    assert _value(rig.tick(input_value=2)) == 2
    rig.bypass = False
    # the pre-bypass processed frame (200) must not flash back: the input stays up
    assert _value(rig.tick(input_value=3)) == 3
    rig.out.put(_packet(201))
    assert _value(rig.tick(input_value=4)) == 201


def test_bad_options_are_refused(clock: FakeClock) -> None:
    box: LatestMailbox[FramePacket] = LatestMailbox()
    with pytest.raises(ValueError):
        Publisher([], 60, box.take_latest, Metrics(), on_stall="grey")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Publisher([], 60, box.take_latest, Metrics(), watchdog_s=0)


def test_a_flapping_render_logs_one_warning_per_10_s(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(clock)
    with caplog.at_level(logging.INFO, logger="bridge.runtime.publisher"):
        for _ in range(10):  # stalls for ~0.6 s, then one frame: ten times in ~7 s
            rig.tick(36, input_value=1)
            rig.out.put(_packet(200))
            rig.tick()
    assert rig.pub.render_stalls == 10 and [s for s, _ in rig.changes].count("stalled") == 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
