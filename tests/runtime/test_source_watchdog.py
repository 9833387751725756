"""Source staleness from the clock: a source whose ``read`` never returns still goes stalled, then
lost, on time; it is closed on the worker thread once the call comes back."""

from __future__ import annotations

import threading
import time

from bridge.io.base import Frame
from bridge.runtime.convert import Resizer
from bridge.runtime.health import SourceHealth
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.source_worker import SourceWorker

from .conftest import FakeClock, ScriptedSource, SourceFactory, bgra_frame


class BlockingSource(ScriptedSource):
    """Delivers ``frames`` frames, then blocks in ``read`` until ``gate`` is set (a backend stuck
    in a native call), then delivers one more."""

    def __init__(self, frames: int = 3) -> None:
        super().__init__([])
        self.frames = frames
        self.gate = threading.Event()
        self.blocked = threading.Event()

    def read(self, timeout: float) -> Frame | None:
        self._touch()
        self.reads += 1
        if self.reads <= self.frames:
            time.sleep(0.001)
            return bgra_frame(self.reads, t_capture=time.monotonic())
        self.blocked.set()
        self.gate.wait(10.0)
        return bgra_frame(self.reads, t_capture=time.monotonic())


def _wait(cond, timeout: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


def test_a_stuck_read_is_stalled_then_lost_by_the_clock(clock: FakeClock) -> None:
    stuck = BlockingSource()
    fresh = ScriptedSource([bgra_frame(50)], repeat_last=True)
    factory = SourceFactory([stuck, fresh], None)
    box: LatestMailbox[FramePacket] = LatestMailbox(capacity=64)
    changes: list[str] = []
    metrics = Metrics(clock)
    worker = SourceWorker(factory, Resizer(16, 16), box, metrics, clock, lambda dt: time.sleep(0.001),
                          on_state=lambda s, d: changes.append(s), watchdog_interval=None,
                          health=SourceHealth(min_stall_s=0.25, lost_after_s=0.75))
    worker.start()
    try:
        assert stuck.blocked.wait(3.0) and worker.state == "live"
        clock.advance(0.1)
        worker.watch()
        assert worker.state == "live"
        clock.advance(0.2)  # 0.3 s of silence
        worker.watch()
        assert worker.state == "stalled"
        clock.advance(0.5)  # 0.8 s
        worker.watch()
        assert worker.state == "lost"  # while read() is still blocked
        assert stuck.closed == 0  # never closed from another thread
        stuck.gate.set()  # the call returns (late, with a frame): dropped, source closed
        clock.advance(1.0)  # past the reconnection backoff
        assert _wait(lambda: stuck.closed == 1 and worker.state == "live")
        assert changes[:4] == ["live", "stalled", "lost", "reconnecting"]
        assert metrics.counter("late_frames") == 1  # the late frame was dropped, not queued
        assert stuck.threads == fresh.threads and threading.get_ident() not in stuck.threads
    finally:
        stuck.gate.set()
        worker.stop()


def test_the_watchdog_thread_does_it_on_real_time() -> None:
    stuck = BlockingSource()
    factory = SourceFactory([stuck], None)
    box: LatestMailbox[FramePacket] = LatestMailbox(capacity=64)
    changes: list[tuple[float, str]] = []
    worker = SourceWorker(factory, Resizer(16, 16), box, Metrics(),
                          on_state=lambda s, d: changes.append((time.monotonic(), s)),
                          health=SourceHealth(min_stall_s=0.1, lost_after_s=0.3))
    worker.start()
    try:
        assert stuck.blocked.wait(3.0)
        t0 = time.monotonic()
        # the state callback runs just after the state changes: wait for it, not for the state
        assert _wait(lambda: len(changes) >= 3, 3.0), changes
        assert worker.state == "lost"
        states = [s for _, s in changes]
        assert states == ["live", "stalled", "lost"]
        assert time.monotonic() - t0 < 2.0
    finally:
        stuck.gate.set()
        worker.stop()
