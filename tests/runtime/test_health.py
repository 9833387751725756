from __future__ import annotations

import pytest

from bridge.runtime.health import NO_SIGNAL_STATES, SourceHealth, SourceState


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def __call__(self, state: str, detail: str) -> None:
        self.changes.append((state, detail))

    @property
    def states(self) -> list[str]:
        return [s for s, _ in self.changes]


def _live(health: SourceHealth, t: float, fps: float = 60.0, frames: int = 30) -> float:
    """Open at t and deliver ``frames`` frames at ``fps``; returns the time of the last frame."""
    assert health.attempt_due(t)
    health.begin_attempt(t)
    health.opened(t)
    for _ in range(frames):
        t += 1 / fps
        health.frame(t)
        assert health.poll(t) is False
    return t


def test_starts_connecting_and_goes_live_on_first_frame() -> None:
    health = SourceHealth()
    rec = Recorder()
    health.add_listener(rec)
    assert health.state == SourceState.CONNECTING
    assert health.attempt_due(0.0)
    health.begin_attempt(0.0)
    health.opened(0.0)
    assert health.state == SourceState.CONNECTING
    assert not health.attempt_due(0.1)
    health.frame(0.1)
    assert health.state == SourceState.LIVE
    assert rec.changes == [("live", "first frame")]


def test_live_to_stalled_at_the_minimum_stall_time() -> None:
    health = SourceHealth()
    last = _live(health, 0.0, fps=60)
    assert health.stall_timeout() == pytest.approx(0.25)  # 3 x 16.7 ms < 250 ms
    assert health.poll(last + 0.249) is False
    assert health.state == SourceState.LIVE
    assert health.poll(last + 0.25) is False
    assert health.state == SourceState.STALLED


def test_stall_time_follows_a_slow_source() -> None:
    health = SourceHealth()
    last = _live(health, 0.0, fps=5, frames=10)
    assert health.interval_estimate() == pytest.approx(0.2)
    assert health.stall_timeout() == pytest.approx(0.6)
    health.poll(last + 0.59)
    assert health.state == SourceState.LIVE
    health.poll(last + 0.6)
    assert health.state == SourceState.STALLED


def test_nominal_fps_is_used_before_frames_come() -> None:
    health = SourceHealth()
    health.begin_attempt(0.0)
    health.opened(0.0, nominal_fps=2.0)
    assert health.stall_timeout() == pytest.approx(1.5)
    assert health.lost_timeout() == pytest.approx(3.0)
    health.opened(0.0, nominal_fps=float("nan"))
    assert health.stall_timeout() == pytest.approx(0.25)
    assert health.lost_timeout() == pytest.approx(1.0)


def test_stalled_recovers_without_reconnecting() -> None:
    health = SourceHealth()
    rec = Recorder()
    health.add_listener(rec)
    last = _live(health, 0.0)
    health.poll(last + 0.5)
    assert health.state == SourceState.STALLED
    health.frame(last + 0.6)
    assert health.state == SourceState.LIVE
    assert health.is_open
    assert rec.changes[-1] == ("live", "frames resumed")


def test_silence_becomes_lost_then_reconnecting_then_live() -> None:
    health = SourceHealth()
    rec = Recorder()
    health.add_listener(rec)
    last = _live(health, 0.0)
    health.poll(last + 0.3)
    assert health.poll(last + 0.99) is False
    assert health.poll(last + 1.0) is True  # caller closes the source
    assert health.state == SourceState.LOST
    assert not health.is_open
    assert health.next_attempt_at == pytest.approx(last + 1.25)
    assert not health.attempt_due(last + 1.2)
    assert health.attempt_due(last + 1.25)
    health.begin_attempt(last + 1.25)
    assert health.state == SourceState.RECONNECTING
    health.opened(last + 1.3)
    health.frame(last + 1.4)
    assert health.state == SourceState.LIVE
    assert rec.states == ["live", "stalled", "lost", "reconnecting", "live"]
    assert rec.changes[-1][1].startswith("back after 0.40 s")


def test_error_is_lost_at_once() -> None:
    health = SourceHealth()
    last = _live(health, 0.0)
    health.error(last + 0.01, "SourceGone: sender vanished")
    assert health.state == SourceState.LOST
    assert health.detail == "SourceGone: sender vanished"
    assert health.next_attempt_at == pytest.approx(last + 0.26)


def test_backoff_sequence_and_reset_after_success() -> None:
    health = SourceHealth()
    rec = Recorder()
    health.add_listener(rec)
    t = _live(health, 0.0)
    health.error(t, "gone")
    delays = []
    for _ in range(7):
        previous = t
        t = health.next_attempt_at
        delays.append(round(t - previous, 6))
        assert health.attempt_due(t)
        health.begin_attempt(t)
        health.open_failed(t, "no such sender")
        assert health.state == SourceState.RECONNECTING
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert health.failed_attempts == 7
    assert "attempt 7 failed: no such sender" in health.detail
    # success: frames flow, backoff resets
    t = health.next_attempt_at
    health.begin_attempt(t)
    health.opened(t)
    health.frame(t + 0.01)
    assert health.state == SourceState.LIVE
    assert health.failed_attempts == 0
    health.error(t + 1.0, "gone again")
    assert health.next_attempt_at - (t + 1.0) == pytest.approx(0.25)
    # each state reported once per outage, however many attempts failed
    assert rec.states == ["live", "lost", "reconnecting", "live", "lost"]


def test_open_without_frames_counts_as_a_failed_attempt() -> None:
    health = SourceHealth()
    health.begin_attempt(0.0)
    health.opened(0.0)
    assert health.poll(0.99) is False
    assert health.poll(1.0) is True
    assert health.state == SourceState.CONNECTING
    assert health.failed_attempts == 1
    assert health.next_attempt_at == pytest.approx(1.25)
    assert "opened but no frame" in health.detail
    health.begin_attempt(1.25)
    health.opened(1.25)
    health.error(1.3, "read failed")
    assert health.state == SourceState.CONNECTING
    assert health.next_attempt_at == pytest.approx(1.8)  # 0.5 s: the backoff kept growing


def test_a_failing_listener_does_not_break_the_machine() -> None:
    health = SourceHealth()

    def boom(state: str, detail: str) -> None:
        raise RuntimeError("listener bug")

    rec = Recorder()
    health.add_listener(boom)
    health.add_listener(rec)
    _live(health, 0.0, frames=2)
    assert rec.states == ["live"]


def test_stop() -> None:
    health = SourceHealth()
    _live(health, 0.0, frames=2)
    health.stop()
    assert health.state == SourceState.STOPPED
    assert not health.attempt_due(100.0)
    assert SourceState.STOPPED in NO_SIGNAL_STATES
    assert SourceState.STALLED not in NO_SIGNAL_STATES


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        SourceHealth(min_stall_s=2.0, lost_after_s=1.0)
    with pytest.raises(ValueError):
        SourceHealth(backoff_initial_s=0.0)
