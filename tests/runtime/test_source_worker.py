from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from bridge.io.base import Frame, PixelFormat, SourceGone
from bridge.runtime.convert import Resizer
from bridge.runtime.health import SourceHealth, SourceState
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.source_worker import SourceWorker

from .conftest import FakeClock, ScriptedSource, SourceFactory, bgra_frame


def _worker(
    factory: SourceFactory,
    clock: FakeClock | None,
    capacity: int = 64,
    **kwargs: object,
) -> tuple[SourceWorker, LatestMailbox[FramePacket], Metrics, list[tuple[str, str]]]:
    box: LatestMailbox[FramePacket] = LatestMailbox(capacity=capacity)
    metrics = Metrics(clock=clock) if clock is not None else Metrics()
    changes: list[tuple[str, str]] = []
    extra: dict[str, object] = dict(kwargs)
    if clock is not None:
        extra.setdefault("clock", clock)
        extra.setdefault("sleep", clock.sleep)
    worker = SourceWorker(
        factory,
        Resizer(32, 32),
        box,
        metrics,
        on_state=lambda s, d: changes.append((s, d)),
        **extra,  # type: ignore[arg-type]
    )
    return worker, box, metrics, changes


def _drain(box: LatestMailbox[FramePacket]) -> list[FramePacket]:
    items = []
    while (item := box.get(timeout=0)) is not None:
        items.append(item)
    return items


def _step_until(worker: SourceWorker, cond: object, limit: int = 1000) -> None:
    for _ in range(limit):
        if cond():  # type: ignore[operator]
            return
        worker.step()
    raise AssertionError(f"condition not reached; state={worker.state} ({worker.detail})")


def test_frames_are_converted_resized_and_queued(clock: FakeClock) -> None:
    source = ScriptedSource([bgra_frame(i) for i in range(5)], clock)
    worker, box, metrics, changes = _worker(SourceFactory([source], clock), clock)
    for _ in range(6):
        worker.step()
    packets = _drain(box)
    assert [p.seq for p in packets] == [0, 1, 2, 3, 4]
    rgb, t_capture, seq = packets[0]
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[16, 16]) == (0, 20, 10)  # BGRA (10, 20, 0) -> RGB, inside the 4:3 letterbox
    assert (rgb[0] == 0).all()  # letterbox bar
    assert t_capture == pytest.approx(clock.now - 4 / 60)
    assert worker.state == SourceState.LIVE
    assert changes == [("live", "first frame")]
    assert metrics.counter("captured") == 5 and metrics.counter("converted") == 5
    assert metrics.state("source") == "live"
    assert metrics.state("input_size") == (64, 48)


def test_source_gone_then_back(clock: FakeClock) -> None:
    first = ScriptedSource([bgra_frame(1), bgra_frame(2), SourceGone("sender quit")], clock)
    second = ScriptedSource([bgra_frame(10), bgra_frame(11)], clock)
    factory = SourceFactory([first, second], clock)
    worker, box, metrics, changes = _worker(factory, clock)
    _step_until(worker, lambda: worker.state == SourceState.LOST)
    assert first.closed == 1
    lost_at = clock.now
    _step_until(worker, lambda: worker.state == SourceState.LIVE)
    states = [s for s, _ in changes]
    assert states == ["live", "lost", "reconnecting", "live"]
    assert changes[1][1] == "SourceGone: sender quit"
    assert factory.calls[1] == pytest.approx(lost_at + 0.25, abs=1e-3)
    worker.step()
    assert [p.seq for p in _drain(box)] == [1, 2, 10, 11]
    assert second.opened == 1 and second.closed == 0
    worker.stop()
    assert second.closed == 1
    assert worker.state == SourceState.STOPPED


def test_any_read_exception_is_a_loss_not_a_crash(clock: FakeClock) -> None:
    first = ScriptedSource([bgra_frame(1), ValueError("driver bug")], clock)
    second = ScriptedSource([bgra_frame(2)], clock)
    worker, box, _, changes = _worker(SourceFactory([first, second], clock), clock)
    _step_until(worker, lambda: len(changes) >= 4)
    assert [s for s, _ in changes] == ["live", "lost", "reconnecting", "live"]
    assert "ValueError: driver bug" in changes[1][1]


def test_open_failures_back_off_until_the_sender_appears(clock: FakeClock) -> None:
    good = ScriptedSource([bgra_frame(5)], clock)
    start = clock.now
    factory = SourceFactory(
        [SourceGone("not found"), ConnectionError("refused"), SourceGone("not found"), good],
        clock,
    )
    worker, box, metrics, changes = _worker(factory, clock)
    _step_until(worker, lambda: worker.state == SourceState.LIVE)
    offsets = [round(t - start, 3) for t in factory.calls]
    assert offsets == [0.0, 0.25, 0.75, 1.75]
    assert changes == [("live", changes[0][1])]  # connecting -> live: one change
    assert "3 failed attempts" in changes[0][1]
    assert [p.seq for p in _drain(box)] == [5]


def test_garbage_frames_are_rejected_and_counted(clock: FakeClock) -> None:
    garbage = [
        Frame(np.zeros((0, 0, 4), np.uint8), PixelFormat.BGRA),
        Frame(np.zeros((8, 8, 4), np.float32), PixelFormat.BGRA),
        Frame(np.zeros((8, 16, 4), np.uint8)[:, ::2], PixelFormat.BGRA),
        Frame(np.zeros((1, 9000, 3), np.uint8), PixelFormat.RGB),
        Frame(np.zeros((4, 4, 3), np.uint8), PixelFormat.BGRA),
    ]
    source = ScriptedSource([bgra_frame(1), *garbage, bgra_frame(2)], clock)
    worker, box, metrics, changes = _worker(SourceFactory([source], clock), clock)
    for _ in range(8):
        worker.step()
    assert metrics.counter("rejected_frames") == 5
    assert metrics.counter("captured") == 7
    assert metrics.counter("converted") == 2
    assert [p.seq for p in _drain(box)] == [1, 2]
    assert worker.state == SourceState.LIVE
    assert source.closed == 0  # garbage never costs a reconnect


def test_silent_source_stalls_then_is_lost_and_recreated(clock: FakeClock) -> None:
    first = ScriptedSource([bgra_frame(i) for i in range(10)], clock)  # then silence
    second = ScriptedSource([bgra_frame(99)], clock)
    factory = SourceFactory([first, second], clock)
    worker, box, _, changes = _worker(factory, clock)
    _step_until(worker, lambda: worker.state == SourceState.STALLED)
    last_frame = worker.health.last_frame_at
    assert last_frame is not None
    assert clock.now - last_frame == pytest.approx(0.25, abs=0.051)  # read timeout granularity
    _step_until(worker, lambda: worker.state == SourceState.LOST)
    assert clock.now - last_frame == pytest.approx(1.0, abs=0.051)
    assert first.closed == 1
    _step_until(worker, lambda: worker.state == SourceState.LIVE)
    assert [s for s, _ in changes] == ["live", "stalled", "lost", "reconnecting", "live"]
    assert len(factory.made) == 2


def test_state_changes_are_logged_once_each(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first = ScriptedSource([bgra_frame(1), SourceGone("gone")], clock)
    factory = SourceFactory([first, SourceGone("still gone")], clock)
    worker, _, _, changes = _worker(factory, clock)
    with caplog.at_level(logging.INFO, logger="bridge.runtime.source_worker"):
        while clock.now < 130.0:  # 30 s of failed reconnects
            worker.step()
    assert len(factory.calls) > 8
    assert [s for s, _ in changes] == ["live", "lost", "reconnecting"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum(": lost (" in m for m in messages) == 1
    assert sum(": reconnecting (" in m for m in messages) == 1
    assert len(messages) <= 6, messages


def test_bad_on_state_callback_does_not_kill_the_worker(clock: FakeClock) -> None:
    source = ScriptedSource([bgra_frame(1), bgra_frame(2)], clock)
    box: LatestMailbox[FramePacket] = LatestMailbox(capacity=8)

    def boom(state: str, detail: str) -> None:
        raise RuntimeError("callback bug")

    worker = SourceWorker(
        SourceFactory([source], clock),
        Resizer(16, 16),
        box,
        Metrics(clock),
        clock,
        clock.sleep,
        on_state=boom,
    )
    for _ in range(3):
        worker.step()
    assert len(box) == 2 and worker.state == SourceState.LIVE


# -- real threads ------------------------------------------------------------------------------


class PacedSource(ScriptedSource):
    """Real-time source: one frame every ``interval`` s; raises SourceGone once at ``fail_at``."""

    def __init__(self, interval: float, fail_at: int | None = None, start_seq: int = 0) -> None:
        super().__init__([])
        self.interval = interval
        self.fail_at = fail_at
        self.seq = start_seq
        self.sent = 0

    def read(self, timeout: float) -> Frame | None:
        self._touch()
        if self.fail_at is not None and self.sent == self.fail_at:
            self.fail_at = None
            raise SourceGone("sender restarted")
        time.sleep(min(self.interval, timeout))
        if self.interval > timeout:
            return None
        self.sent += 1
        self.seq += 1
        return bgra_frame(self.seq, t_capture=time.monotonic())


def test_threaded_worker_recovers_and_keeps_backend_calls_on_one_thread() -> None:
    first = PacedSource(0.01, fail_at=5)
    second = PacedSource(0.01, start_seq=100)
    factory = SourceFactory([first, second], None)
    worker, box, metrics, changes = _worker(factory, None, capacity=256)
    worker.start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not (
        len(changes) >= 4 and metrics.counter("converted") >= 12
    ):
        time.sleep(0.01)
    t0 = time.monotonic()
    assert worker.stop() is True
    assert time.monotonic() - t0 < 0.5
    assert [s for s, _ in changes][:4] == ["live", "lost", "reconnecting", "live"]
    seqs = [p.seq for p in _drain(box)]
    assert seqs[:5] == [1, 2, 3, 4, 5]
    assert any(s > 100 for s in seqs)  # frames resumed from the new source
    threads = factory.threads | first.threads | second.threads
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert first.closed == 1 and second.closed == 1
    assert worker.state == SourceState.STOPPED


def test_stop_is_quick_during_a_long_backoff_wait() -> None:
    health = SourceHealth(backoff_initial_s=5.0, backoff_max_s=5.0)
    factory = SourceFactory([SourceGone("nobody there")], None)
    worker, _, _, _ = _worker(factory, None, health=health)
    worker.start()
    time.sleep(0.1)
    assert len(factory.calls) == 1  # now waiting 5 s for the retry
    t0 = time.monotonic()
    assert worker.stop() is True
    assert time.monotonic() - t0 < 0.5


def test_stop_is_quick_while_reading_a_silent_source() -> None:
    silent = PacedSource(10.0)  # never delivers: every read waits its full timeout
    worker, _, _, _ = _worker(SourceFactory([silent], None), None)
    worker.start()
    time.sleep(0.15)
    t0 = time.monotonic()
    assert worker.stop() is True
    assert time.monotonic() - t0 < 0.5
    assert silent.closed == 1
