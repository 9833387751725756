from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher, TickSchedule

from .conftest import FakeClock, RecordingSink


def _packet(value: int, t_capture: float = 0.0, size: tuple[int, int] = (64, 48)) -> FramePacket:
    w, h = size
    return FramePacket(np.full((h, w, 3), value, np.uint8), t_capture, value)


class State:
    """A settable source state for ``source_state``."""

    def __init__(self, value: str = "live") -> None:
        self.value = value

    def __call__(self) -> str:
        return self.value


def _publisher(
    clock: FakeClock,
    sinks: list[object],
    state: State | None = None,
    box: LatestMailbox[FramePacket] | None = None,
    **kwargs: object,
) -> tuple[Publisher, LatestMailbox[FramePacket], Metrics]:
    box = box if box is not None else LatestMailbox(capacity=4)
    metrics = Metrics(clock=clock)
    pub = Publisher(
        sinks,  # type: ignore[arg-type]
        60.0,
        box.take_latest,
        metrics,
        source_state=state or State(),
        clock=clock,
        sleep=clock.sleep,
        threaded_sinks=False,  # sinks called inline: deterministic on the manual clock
        **kwargs,  # type: ignore[arg-type]
    )
    return pub, box, metrics


def _is_slate(frame: np.ndarray) -> bool:
    return bool(frame.any()) and len(np.unique(frame.reshape(-1, 3), axis=0)) > 2


# -- schedule ----------------------------------------------------------------------------------


def test_schedule_has_no_drift() -> None:
    sched = TickSchedule(1 / 60, 10.0)
    for i in range(1, 10_001):
        # each tick is late by a random-ish amount below one period: never accumulates
        assert sched.advance(sched.deadline + (i % 7) * 0.002) == 0
    assert sched.deadline == pytest.approx(10.0 + 10_000 / 60, abs=1e-9)


def test_schedule_skips_missed_slots_instead_of_bursting() -> None:
    sched = TickSchedule(1.0, 0.0)
    assert sched.advance(3.2) == 2  # tick 0 took 3.2 periods: slots 1 and 2 are skipped
    assert sched.deadline == 3.0  # slot 3 is still current: one tick now...
    assert sched.advance(3.25) == 0
    assert sched.deadline == 4.0  # ...then back on the grid
    sched.reset(0.5, 10.0)
    assert sched.deadline == 10.5


# -- what gets shown ---------------------------------------------------------------------------


def test_slate_before_the_first_frame(clock: FakeClock) -> None:
    sink = RecordingSink()
    pub, box, metrics = _publisher(clock, [sink], State("connecting"))
    frame = pub.publish_once()
    assert frame.shape == (512, 512, 3) and _is_slate(frame)
    assert sink.opens == [(512, 512, 60.0)]
    assert pub.showing == "slate"
    # even with the source live, until the model produced something
    pub2, _, _ = _publisher(clock, [RecordingSink()], State("live"), size=(320, 180))
    assert _is_slate(pub2.publish_once()) and pub2.showing == "slate"
    black, _, _ = _publisher(clock, [RecordingSink()], State("connecting"), no_signal="black")
    first = black.publish_once()
    assert first.shape == (512, 512, 3) and not first.any()


def test_new_frame_then_repeats_of_the_last(clock: FakeClock) -> None:
    sink = RecordingSink()
    pub, box, metrics = _publisher(clock, [sink])
    box.put(_packet(1, t_capture=clock.now - 0.02))
    box.put(_packet(2, t_capture=clock.now - 0.01))  # newest wins
    for _ in range(5):
        pub.publish_once()
        clock.advance(1 / 60)
    assert len(sink.frames) == 5
    assert all(f is sink.frames[0] for f in sink.frames)
    assert int(sink.frames[0][0, 0, 0]) == 2
    assert metrics.counter("published") == 5
    assert metrics.counter("published_new") == 1
    assert metrics.counter("repeated") == 4
    lat = metrics.latency().snapshot()
    assert lat["count"] == 1 and lat["p50_ms"] == pytest.approx(10.0)
    box.put(_packet(3, t_capture=clock.now - 0.005))
    pub.publish_once()
    assert int(sink.frames[-1][0, 0, 0]) == 3
    assert metrics.latency().count == 2


@pytest.mark.parametrize("lost_state", ["lost", "reconnecting"])
def test_no_signal_modes_while_lost(clock: FakeClock, lost_state: str) -> None:
    state = State()
    sink = RecordingSink()
    pub, box, metrics = _publisher(clock, [sink], state)
    box.put(_packet(9))
    last = pub.publish_once()
    state.value = lost_state
    slate = pub.publish_once()
    assert _is_slate(slate) and slate.shape == last.shape and pub.showing == "slate"
    pub.set_no_signal("black")
    assert not pub.publish_once().any()
    state.value = "live"  # back, but no new frame yet: no flash of the pre-outage picture
    assert not pub.publish_once().any() and pub.showing == "black"
    assert sink.opens == [(64, 48, 60.0)]  # the output size survived the outage
    box.put(_packet(10))
    fresh = pub.publish_once()
    assert int(fresh[0, 0, 0]) == 10 and pub.showing == "frame"
    assert metrics.state("output") == "frame"
    pub.set_no_signal("hold")
    state.value = lost_state
    assert pub.publish_once() is fresh
    state.value = "stalled"  # a stall holds whatever the mode
    pub.set_no_signal("slate")
    assert pub.publish_once() is fresh
    state.value = "live"
    assert pub.publish_once() is fresh and pub.showing == "frame"
    with pytest.raises(ValueError):
        pub.set_no_signal("grey")  # type: ignore[arg-type]


def test_slate_timer_is_rendered_at_most_once_a_second(clock: FakeClock) -> None:
    state = State("lost")
    pub, _, _ = _publisher(clock, [RecordingSink()], state)
    start = clock.now
    for _ in range(180):  # 3 s at 60 fps
        pub.publish_once()
        clock.advance(1 / 60)
    assert pub._cards.renders <= 4
    assert pub._slate_text("lost", start + 3.5) == "source lost - 3 s"


def test_output_is_scaled_to_the_configured_size(clock: FakeClock) -> None:
    sink = RecordingSink()
    pub, box, _ = _publisher(clock, [sink], size=(256, 144))
    box.put(_packet(200, size=(512, 512)))
    out = pub.publish_once()
    assert out.shape == (144, 256, 3)
    assert sink.opens == [(256, 144, 60.0)]
    assert (out[:, :56] == 0).all() and (out[:, 56:200] == 200).all()  # fit: pillarbox
    assert pub.publish_once() is out  # scaled once, then repeated


def test_sinks_reopen_when_the_frame_size_changes(clock: FakeClock) -> None:
    sink = RecordingSink()
    pub, box, _ = _publisher(clock, [sink], State("connecting"))
    pub.publish_once()  # slate at the default 512 x 512
    box.put(_packet(1, size=(768, 432)))
    pub.publish_once()
    assert sink.opens == [(512, 512, 60.0), (768, 432, 60.0)]
    assert sink.closes == 1
    assert sink.frames[-1].shape == (432, 768, 3)


def test_bad_processed_frames_are_ignored(clock: FakeClock) -> None:
    sink = RecordingSink()
    pub, box, metrics = _publisher(clock, [sink])
    box.put(_packet(5))
    pub.publish_once()
    for bad in (
        FramePacket(np.zeros((8, 8, 4), np.uint8), 0.0, 1),
        FramePacket(np.zeros((8, 8, 3), np.float32), 0.0, 1),
        ("not", "a packet"),
        FramePacket(np.zeros((0, 8, 3), np.uint8), 0.0, 1),
    ):
        box.put(bad)  # type: ignore[arg-type]
        assert int(pub.publish_once()[0, 0, 0]) == 5
    assert metrics.counter("rejected_outputs") == 4


def test_broken_callbacks_do_not_stop_the_output(clock: FakeClock) -> None:
    sink = RecordingSink()

    def get_latest() -> FramePacket:
        raise RuntimeError("render thread bug")

    def source_state() -> str:
        raise RuntimeError("state bug")

    pub = Publisher([sink], 60, get_latest, Metrics(clock), source_state=source_state, clock=clock,
                    threaded_sinks=False)
    for _ in range(3):
        pub.publish_once()
    assert len(sink.frames) == 3


# -- sink isolation ----------------------------------------------------------------------------


def test_a_failing_sink_is_isolated_and_reopened_with_backoff(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    start = clock.now
    bad = RecordingSink(clock, fail_send=lambda n: True)
    good = RecordingSink(clock)
    pub, box, metrics = _publisher(clock, [bad, good])
    box.put(_packet(1))
    ticks = 0
    with caplog.at_level(logging.WARNING, logger="bridge.runtime.publisher"):
        while clock.now < start + 8.0:
            pub.publish_once()
            ticks += 1
            clock.advance(1 / 60)
    assert len(good.frames) == ticks  # never missed a tick
    assert bad.open_times[0] == start
    gaps = np.diff(bad.open_times)
    expected = [0.25, 0.5, 1.0, 2.0, 4.0]  # the next one (5 s) is beyond the 8 s run
    assert len(gaps) == len(expected)
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay - 1e-6 <= gap <= delay + 1 / 60 + 1e-6  # retried on the first tick after
    assert bad.send_calls == 6 and bad.closes == 6
    assert metrics.counter("sink_errors") == 6
    assert metrics.counter("sink_errors:0:recording") == 6
    assert metrics.counter("published") == ticks
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one line per burst (then at most one per 10 s)
    assert pub.sink_stats()[0]["errors"] == 6


def test_sink_recovers_and_backoff_resets(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = RecordingSink(clock, fail_send=lambda n: n <= 3)
    pub, box, _ = _publisher(clock, [flaky])
    box.put(_packet(1))
    start = clock.now
    with caplog.at_level(logging.INFO, logger="bridge.runtime.publisher"):
        while clock.now < start + 3.0:
            pub.publish_once()
            clock.advance(1 / 60)
    assert any("works again after 3 errors" in r.getMessage() for r in caplog.records)
    assert flaky.send_calls > 3 + 60  # sending every tick again
    slot = pub._slots[0]
    assert slot.backoff == 0.25


def test_failing_open_and_factories_are_recreated(clock: FakeClock) -> None:
    made: list[RecordingSink] = []

    def factory() -> RecordingSink:
        sink = RecordingSink(clock, fail_open=lambda n: len(made) <= 2)
        made.append(sink)
        return sink

    good = RecordingSink(clock)
    pub, box, metrics = _publisher(clock, [factory, good])
    start = clock.now
    while clock.now < start + 1.0:
        pub.publish_once()
        clock.advance(1 / 60)
    assert len(made) == 3  # failed open -> new object next time
    assert made[2].opens == [(512, 512, 60.0)] and len(made[2].frames) > 10
    assert metrics.counter("sink_errors") == 2
    pub.stop()
    assert made[2].closes == 1 and good.closes == 1


def test_publisher_validates_its_options(clock: FakeClock) -> None:
    box: LatestMailbox[FramePacket] = LatestMailbox()
    for fps in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            Publisher([], fps, box.take_latest, Metrics())
    with pytest.raises(ValueError):
        Publisher([], 60, box.take_latest, Metrics(), no_signal="blue")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Publisher([42], 60, box.take_latest, Metrics())  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Publisher([], 60, box.take_latest, Metrics(), size=(0, 10))


# -- real thread -------------------------------------------------------------------------------


def test_steady_rate_with_no_new_frames() -> None:
    sink = RecordingSink(time.monotonic)
    box: LatestMailbox[FramePacket] = LatestMailbox()
    metrics = Metrics()
    pub = Publisher([sink], 60, box.take_latest, metrics)
    box.put(_packet(4))
    pub.start()
    time.sleep(0.5)
    pub.stop()
    n = len(sink.times)
    assert 25 <= n <= 33, n  # 0.5 s at 60 fps = 30 (+1 at t=0)
    gaps = np.diff(sink.times)
    assert gaps.max() < 0.05, gaps.max()  # never a visible freeze
    assert abs(float(np.median(gaps)) - 1 / 60) < 0.004
    assert all(f is sink.frames[0] for f in sink.frames)  # the last frame, repeated
    assert metrics.counter("repeated") == metrics.counter("published") - 1
    assert n >= metrics.counter("published") - 2  # (the sink's mailbox may drop one under load)
    assert sink.closes == 1  # closed on the publisher thread at stop


def test_thread_survives_a_failing_sink_and_stops_quickly() -> None:
    bad = RecordingSink(time.monotonic, fail_send=lambda n: True)
    good = RecordingSink(time.monotonic)
    box: LatestMailbox[FramePacket] = LatestMailbox()
    pub = Publisher([bad, good], 100, box.take_latest, Metrics(), no_signal="black")
    pub.start()
    time.sleep(0.3)
    assert pub.is_alive()
    t0 = time.monotonic()
    assert pub.stop() is True
    assert time.monotonic() - t0 < 0.5
    assert len(good.times) >= 20
    assert bad.send_calls >= 1


def test_set_fps_while_running() -> None:
    sink = RecordingSink(time.monotonic)
    box: LatestMailbox[FramePacket] = LatestMailbox()
    pub = Publisher([sink], 30, box.take_latest, Metrics())
    pub.start()
    time.sleep(0.2)
    pub.set_fps(120)
    mark = len(sink.times)
    time.sleep(0.3)
    pub.stop()
    fast = len(sink.times) - mark
    assert fast >= 25, fast  # ~36 expected at 120 fps over 0.3 s
    assert pub.fps == 120


# -- sink workers: one thread and mailbox per sink -----------------------------------------------


class SlowSink(RecordingSink):
    def __init__(self, delay: float, **kwargs: object) -> None:
        super().__init__(time.monotonic, **kwargs)  # type: ignore[arg-type]
        self.delay = delay
        self.threads: set[int] = set()

    def open(self, width: int, height: int, fps: float) -> None:
        self.threads.add(threading.get_ident())
        super().open(width, height, fps)

    def send(self, rgb: np.ndarray) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        super().send(rgb)


def test_a_slow_sink_does_not_delay_the_clock_or_another_sink() -> None:
    slow = SlowSink(0.2)
    good = RecordingSink(time.monotonic)
    box: LatestMailbox[FramePacket] = LatestMailbox()
    metrics = Metrics()
    pub = Publisher([slow, good], 60, box.take_latest, metrics)
    box.put(_packet(4))
    pub.start()
    time.sleep(1.0)
    pub.stop()
    published = metrics.counter("published")
    assert published >= 50, published  # ~60: the clock kept its rate
    # (thresholds leave room for a loaded machine: blocking on the slow sink gives ~5 frames and
    # 200 ms gaps)
    assert len(good.frames) >= 0.8 * published, (len(good.frames), published)
    assert np.diff(good.times).max() < 0.15  # never held up by the 200 ms sends
    assert 3 <= len(slow.frames) <= 7  # the slow one got what it could take, newest first
    stats = pub.sink_stats()
    assert stats[0]["dropped"] >= published - 10 and stats[1]["sends"] == len(good.frames)
    assert stats[0]["state"] == "closed" and stats[1]["state"] == "closed"  # closed at stop


def test_a_failing_sink_is_reopened_on_its_own_thread_off_the_clock() -> None:
    opens: list[int] = []

    class Flaky(SlowSink):
        def open(self, width: int, height: int, fps: float) -> None:
            opens.append(threading.get_ident())
            time.sleep(0.15)  # a slow re-open (an NDI sender, a file on a slow disk)
            super().open(width, height, fps)

    flaky = Flaky(0.0, fail_send=lambda n: n % 3 == 0)
    good = RecordingSink(time.monotonic)
    box: LatestMailbox[FramePacket] = LatestMailbox()
    metrics = Metrics()
    pub = Publisher([flaky, good], 60, box.take_latest, metrics, backoff_initial_s=0.05,
                    backoff_max_s=0.05)
    box.put(_packet(4))
    pub.start()
    time.sleep(1.2)
    pub.stop()
    assert len(opens) >= 3  # re-opened several times...
    assert pub._thread is not None and pub._thread.ident not in opens  # ...never on the clock
    assert len(set(opens)) == 1
    published = metrics.counter("published")
    assert len(good.frames) >= 0.8 * published and published >= 50
    assert metrics.counter("late_ticks") < 15  # re-opening on the clock: ~9 late ticks per open
    stats = pub.sink_stats()[0]
    assert stats["errors"] >= 2 and "send broke" in str(stats["last_error"])
